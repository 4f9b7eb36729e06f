//! The benchmarks the papers report, scored as their official scripts score them.
//!
//! A [`Benchmark`] reads an answers file in LLaVA's format ([`AnswerFile`]) and
//! the benchmark's own release files, unchanged, and returns either a
//! [`Score`] — the headline in the unit the CCRA paper's tables use, and every
//! metric the official script prints — or, for splits whose labels are held by
//! a server, the [`Submission`] file that server takes. Each benchmark is one
//! file here and one line in [`BenchmarkRegistry::default`].
//!
//! Scores follow a [`Convention`]: LLaVA-1.5's evaluation scripts by default,
//! lmms-eval's where it scores differently. Each score says which produced it.
//! A number is only given when the inputs allow the official number: a missing,
//! duplicated or unknown answer, or files whose counts disagree, are errors that
//! name the file and the question — never a quietly shorter denominator.

mod error;
mod files;
mod pyrandom;
mod pytext;
pub mod questions;
mod table;
mod vqa_accuracy;

mod gqa;
mod mmbench;
mod mme;
mod mmmu;
mod mmvet;
mod pope;
mod seed;
mod sqa;
mod textvqa;
mod vizwiz;
mod vqav2;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use error::BenchmarkError;
pub use files::{Answer, AnswerFile, QuestionId};
pub use questions::{Question, QuestionImage};
pub use table::Table;

/// Whose scoring rules produced a number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Convention {
    /// LLaVA-1.5's evaluation scripts (the CCRA and LLaVA papers' numbers).
    #[default]
    Llava,
    /// lmms-eval's task definitions.
    LmmsEval,
}

impl Convention {
    pub const ALL: [Convention; 2] = [Convention::Llava, Convention::LmmsEval];

    pub fn name(self) -> &'static str {
        match self {
            Convention::Llava => "llava",
            Convention::LmmsEval => "lmms-eval",
        }
    }
}

impl fmt::Display for Convention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Convention {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Convention::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("unknown convention `{s}` (llava or lmms-eval)"))
    }
}

/// What a benchmark is scored from.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    pub answers: &'a AnswerFile,
    /// The benchmark's release file or directory (`--annotations`).
    pub annotations: Option<&'a Path>,
    /// LLaVA's question file for it (`--questions`).
    pub questions: Option<&'a Path>,
    pub convention: Convention,
}

impl<'a> Inputs<'a> {
    /// `--annotations`, required by `benchmark` to hold `what`.
    pub(crate) fn annotations(
        &self,
        benchmark: &'static str,
        what: &'static str,
    ) -> Result<&'a Path, BenchmarkError> {
        required(self.annotations, benchmark, "--annotations", what)
    }

    /// `--questions`, required by `benchmark` to hold `what`.
    pub(crate) fn questions(
        &self,
        benchmark: &'static str,
        what: &'static str,
    ) -> Result<&'a Path, BenchmarkError> {
        required(self.questions, benchmark, "--questions", what)
    }
}

fn required<'a>(
    path: Option<&'a Path>,
    benchmark: &'static str,
    flag: &'static str,
    what: &'static str,
) -> Result<&'a Path, BenchmarkError> {
    path.ok_or(BenchmarkError::NeedsInput {
        benchmark,
        flag,
        what,
    })
}

/// A benchmark's number, with the metrics beside it.
#[derive(Clone, Debug, Serialize)]
pub struct Score {
    pub benchmark: &'static str,
    pub convention: Convention,
    /// The headline, in the unit the CCRA paper's tables use ([`Score::unit`]).
    pub score: f64,
    /// What the headline is, e.g. "mean F1 over the three samplers, × 100".
    pub headline: &'static str,
    pub unit: &'static str,
    /// Everything else the official script reports, by name.
    pub metrics: Map<String, Value>,
    /// Facts about this number a reader must know (rules that are not the
    /// official one, questions the official script would have crashed on).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    #[serde(skip)]
    pub table: Table,
}

/// A file an evaluation server scores.
#[derive(Clone, Debug)]
pub struct Submission {
    pub benchmark: &'static str,
    /// The file name the official conversion script gives it.
    pub file_name: String,
    pub contents: Vec<u8>,
    /// Entries written.
    pub entries: usize,
    /// Where it is scored.
    pub server: &'static str,
    pub notes: Vec<String>,
}

/// What scoring an answers file gives.
#[derive(Clone, Debug)]
pub enum Outcome {
    Score(Score),
    Submission(Submission),
}

/// How lmms-eval scores a benchmark, beside LLaVA's scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LmmsEval {
    /// By a rule of its own, which [`Benchmark::score`] applies under
    /// [`Convention::LmmsEval`].
    Own,
    /// By LLaVA's rule; the string says how (for the score's notes).
    Same(&'static str),
    /// Not from these inputs; the string says why.
    Unavailable(&'static str),
}

impl Outcome {
    /// The submission file, when the outcome is one.
    pub fn submission(&self) -> Option<&Submission> {
        match self {
            Outcome::Submission(submission) => Some(submission),
            Outcome::Score(_) => None,
        }
    }

    /// The JSON report `vlmkit score --json` writes: the score, or for a
    /// submission `"score": null` and where the file went.
    pub fn report(&self, convention: Convention, submission_path: Option<&Path>) -> Value {
        match self {
            Outcome::Score(score) => serde_json::to_value(score).expect("scores serialise"),
            Outcome::Submission(submission) => serde_json::json!({
                "benchmark": submission.benchmark,
                "convention": convention,
                "score": null,
                "submission": submission_path,
                "server": submission.server,
                "entries": submission.entries,
                "notes": submission.notes,
            }),
        }
    }
}

/// One published benchmark.
pub trait Benchmark: Send + Sync {
    /// Its name on the command line (`gqa`, `pope`, …).
    fn name(&self) -> &'static str;

    /// Its column in the CCRA paper's tables (`GQA`, `SQA-IMG`, `MME-P`, …).
    fn column(&self) -> &'static str;

    /// What `--annotations` (and `--questions`, where read) must hold.
    fn inputs_help(&self) -> &'static str;

    /// How lmms-eval scores it.
    fn lmms_eval(&self) -> LmmsEval;

    /// Scores `inputs.answers` under `inputs.convention` (supported: checked
    /// by [`BenchmarkRegistry::score`]).
    fn score(&self, inputs: &Inputs<'_>) -> Result<Outcome, BenchmarkError>;

    /// Its questions, as LLaVA's inference script reads its question file
    /// (LLaVA's JSON-lines format unless the benchmark says otherwise).
    fn questions(&self, path: &Path) -> Result<Vec<Question>, BenchmarkError> {
        questions::read_llava_jsonl(path)
    }

    /// LLaVA's `max_new_tokens` for it: `model_vqa_loader.py`'s 128 unless its
    /// script says otherwise.
    fn max_new_tokens(&self) -> usize {
        128
    }
}

/// The benchmarks a process knows, in the CCRA paper's column order.
pub struct BenchmarkRegistry {
    benchmarks: Vec<Box<dyn Benchmark>>,
}

impl fmt::Debug for BenchmarkRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Default for BenchmarkRegistry {
    fn default() -> Self {
        Self {
            benchmarks: vec![
                Box::new(gqa::Gqa),
                Box::new(sqa::ScienceQa),
                Box::new(textvqa::TextVqa),
                Box::new(vizwiz::VizWiz),
                Box::new(mmbench::MmBench),
                Box::new(mmvet::MmVet),
                Box::new(seed::SeedBench),
                Box::new(mmmu::Mmmu),
                Box::new(mme::Mme),
                Box::new(pope::Pope),
                Box::new(vqav2::VqaV2),
            ],
        }
    }
}

impl BenchmarkRegistry {
    /// Adds a benchmark after the others; a second one of a name is refused.
    pub fn register(&mut self, benchmark: Box<dyn Benchmark>) -> Result<(), String> {
        if self.get(benchmark.name()).is_some() {
            return Err(format!(
                "benchmark `{}` is registered twice",
                benchmark.name()
            ));
        }
        self.benchmarks.push(benchmark);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&dyn Benchmark> {
        self.benchmarks
            .iter()
            .find(|b| b.name() == name)
            .map(|b| b.as_ref())
    }

    pub fn iter(&self) -> impl Iterator<Item = &dyn Benchmark> {
        self.benchmarks.iter().map(|b| b.as_ref())
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.benchmarks.iter().map(|b| b.name())
    }

    /// Scores `inputs` on benchmark `name`.
    pub fn score(&self, name: &str, inputs: &Inputs<'_>) -> Result<Outcome, BenchmarkError> {
        let benchmark = self
            .get(name)
            .ok_or_else(|| BenchmarkError::UnknownBenchmark {
                name: name.to_owned(),
                known: self.names().collect::<Vec<_>>().join(", "),
            })?;
        if inputs.convention == Convention::Llava {
            return benchmark.score(inputs);
        }
        match benchmark.lmms_eval() {
            LmmsEval::Own => benchmark.score(inputs),
            LmmsEval::Same(how) => {
                let mut outcome = benchmark.score(&Inputs {
                    convention: Convention::Llava,
                    ..*inputs
                })?;
                let note = format!(
                    "lmms-eval scores {} by LLaVA's rule ({how})",
                    benchmark.name()
                );
                match &mut outcome {
                    Outcome::Score(score) => {
                        score.convention = Convention::LmmsEval;
                        score.notes.push(note);
                    }
                    Outcome::Submission(submission) => submission.notes.push(note),
                }
                Ok(outcome)
            }
            LmmsEval::Unavailable(reason) => Err(BenchmarkError::ConventionUnavailable {
                benchmark: benchmark.name(),
                reason,
            }),
        }
    }
}

/// A JSON object built with `json!`, as a map.
pub(crate) fn into_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("expected a JSON object, built {other}"),
    }
}

/// The file name LLaVA's conversion scripts give a submission: the answers
/// file's stem (its experiment name) with `extension`.
pub(crate) fn submission_name(answers: &AnswerFile, extension: &str) -> String {
    let stem = answers
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "answers".into());
    format!("{stem}.{extension}")
}

/// `part / whole × 100`, the percentage the papers print.
pub(crate) fn percent(part: f64, whole: f64) -> f64 {
    part / whole * 100.0
}
