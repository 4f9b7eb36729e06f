//! `vlmkit score`: a published benchmark scored from an answers file, as its
//! official script scores it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use vlmkit_benchmarks::{AnswerFile, BenchmarkRegistry, Convention, Inputs, Outcome};

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// The benchmark: gqa, sqa, textvqa, vizwiz, mmbench, mmvet, seed, mmmu, mme, pope or vqav2
    /// (docs/benchmarks.md says which files each needs).
    pub benchmark: String,
    /// The answers, one JSON object a line in LLaVA's answer format (`question_id`, `prompt`,
    /// `text`), as LLaVA's `model_vqa_loader.py` writes them.
    #[arg(long, value_name = "FILE")]
    pub answers: PathBuf,
    /// The benchmark's official release file or directory, unchanged.
    #[arg(long, value_name = "PATH")]
    pub annotations: Option<PathBuf>,
    /// LLaVA's question file for the benchmark, where its scorer reads one (POPE's categories).
    #[arg(long, value_name = "FILE")]
    pub questions: Option<PathBuf>,
    /// Whose scoring rules: LLaVA-1.5's evaluation scripts, or lmms-eval's where they differ.
    #[arg(long, value_name = "NAME", default_value = "llava")]
    pub convention: Convention,
    /// Also write the score as JSON: {"benchmark", "convention", "score", "metrics", …}.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Where a server's submission file goes, for splits scored by a server and for MM-Vet
    /// (default: `<answers directory>/<benchmark>-submission/<answers stem>.json`).
    #[arg(long, value_name = "FILE")]
    pub submission: Option<PathBuf>,
}

pub fn run(args: ScoreArgs) -> Result<()> {
    let registry = BenchmarkRegistry::default();
    let answers = AnswerFile::read(&args.answers)?;
    let inputs = Inputs {
        answers: &answers,
        annotations: args.annotations.as_deref(),
        questions: args.questions.as_deref(),
        convention: args.convention,
    };
    let read: Vec<&Path> = [
        Some(args.answers.as_path()),
        inputs.annotations,
        inputs.questions,
    ]
    .into_iter()
    .flatten()
    .collect();
    if let Some(json) = &args.json {
        crate::common::refuse_overwriting_inputs("--json", json, &read)?;
    }
    let outcome = registry
        .score(&args.benchmark, &inputs)
        .with_context(|| format!("scoring {} on {}", args.answers.display(), args.benchmark))?;
    report_outcome(
        outcome,
        &args.answers,
        args.submission.as_deref(),
        args.json.as_deref(),
        &read,
        args.convention,
    )
}

/// Prints a score (or writes a submission file) and, with `json`, writes the
/// JSON report; `read` are the command's inputs, which no output may replace.
pub(crate) fn report_outcome(
    outcome: Outcome,
    answers: &Path,
    submission_path: Option<&Path>,
    json: Option<&Path>,
    read: &[&Path],
    convention: Convention,
) -> Result<()> {
    let submission = match outcome.submission() {
        Some(submission) => {
            let path = submission_path.map(Path::to_path_buf).unwrap_or_else(|| {
                let dir = answers.parent().unwrap_or(Path::new("."));
                dir.join(format!("{}-submission", submission.benchmark))
                    .join(&submission.file_name)
            });
            crate::common::refuse_overwriting_inputs("--submission", &path, read)?;
            Some(path)
        }
        None => None,
    };
    vlmkit_eval::benchmark::save_outcome(&outcome, convention, submission.as_deref(), json)?;
    let notes = match &outcome {
        Outcome::Score(score) => {
            println!(
                "{} — {:.2} {} ({}), {} convention",
                score.benchmark, score.score, score.unit, score.headline, score.convention
            );
            print!("{}", score.table);
            &score.notes
        }
        Outcome::Submission(s) => {
            let path = submission.as_deref().unwrap_or(Path::new(""));
            println!(
                "{}: no score here — {} entries written to {} for {}",
                s.benchmark,
                s.entries,
                path.display(),
                s.server
            );
            &s.notes
        }
    };
    for note in notes {
        println!("note: {note}");
    }
    Ok(())
}
