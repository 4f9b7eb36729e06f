//! Answering a published benchmark's question file as LLaVA-1.5's inference
//! scripts do, and writing LLaVA's answers file: the questions in the recipe's
//! conversation template with the image first, greedy decoding with the
//! benchmark's `max_new_tokens`, several questions per forward (padded, with
//! the KV cache), one answer line per question in the file's order.

use std::io::Write;
use std::path::{Path, PathBuf};

use vlmkit_benchmarks::{Question, QuestionImage};
use vlmkit_core::GenerateOptions;
use vlmkit_data::Example;
use vlmkit_pipeline::LoadedModel;

use crate::run::ask;
use crate::EvalError;

/// What answering a question file gave.
#[derive(Debug)]
pub struct BenchmarkAnswers {
    /// LLaVA's answer lines, in the question file's order.
    pub lines: Vec<serde_json::Value>,
    /// Questions whose prompt does not fit the model's positions: not asked,
    /// answered with an empty reply (so scored wrong), and listed here.
    pub unanswered: Vec<String>,
}

/// A question's image, decoded; errors name the question and the file.
fn load_image(question: &Question, images: &Path) -> Result<Option<image::RgbImage>, EvalError> {
    let decoded = match &question.image {
        None => return Ok(None),
        Some(QuestionImage::File(relative)) => {
            let path = images.join(relative);
            vlmkit_data::read_image(&path).map_err(|e| format!("{}: {e}", path.display()))
        }
        Some(QuestionImage::Encoded(bytes)) => {
            image::load_from_memory(bytes).map_err(|e| format!("its encoded image: {e}"))
        }
    };
    decoded
        .map(|image| Some(image.to_rgb8()))
        .map_err(|reason| EvalError::Benchmark {
            path: images.to_path_buf(),
            message: format!("question {}: {reason}", question.question_id()),
        })
}

/// Answers `questions` (their images under `images`) in batches of
/// `batch_size`; `model_id` goes into each answer line.
pub fn answer_benchmark(
    model: &LoadedModel,
    questions: &[Question],
    images: &Path,
    batch_size: usize,
    max_new_tokens: usize,
    model_id: &str,
    mut on_batch: impl FnMut(usize, usize),
) -> Result<BenchmarkAnswers, EvalError> {
    let gen = GenerateOptions {
        max_new_tokens,
        ..GenerateOptions::default()
    };
    let builder = model.plan.batch_builder(model.vlm.device.clone())?;
    let mut answers = BenchmarkAnswers {
        lines: Vec::with_capacity(questions.len()),
        unanswered: Vec::new(),
    };
    for (batch_index, batch) in questions.chunks(batch_size.max(1)).enumerate() {
        let examples = batch
            .iter()
            .map(|q| {
                let image = load_image(q, images)?;
                Ok(Example::single_turn(
                    q.question_id().to_string(),
                    image,
                    &q.text,
                    "",
                ))
            })
            .collect::<Result<Vec<_>, EvalError>>()?;
        let replies = ask(model, &builder, &examples, &gen)?;
        for (offset, (question, reply)) in batch.iter().zip(replies).enumerate() {
            let position = batch_index * batch_size.max(1) + offset;
            // LLaVA's scripts strip the decoded reply.
            let reply = match reply {
                Ok(reply) => reply.trim().to_owned(),
                Err(reason) => {
                    answers
                        .unanswered
                        .push(format!("question {}: {reason}", question.question_id()));
                    String::new()
                }
            };
            answers
                .lines
                .push(question.answer_line(&reply, model_id, position));
        }
        on_batch(answers.lines.len(), questions.len());
    }
    Ok(answers)
}

/// Writes answer lines as JSON lines to `path`, atomically.
pub fn write_answers(path: &Path, lines: &[serde_json::Value]) -> Result<PathBuf, EvalError> {
    let mut text = Vec::new();
    for line in lines {
        writeln!(text, "{line}").expect("writing to memory");
    }
    vlmkit_core::fsutil::write_atomic(path, &text).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(path.to_path_buf())
}

/// A benchmark to answer (and score), as `vlmkit eval --benchmark` or a
/// recipe's `[[eval.benchmarks]]` names it.
#[derive(Debug, Clone)]
pub struct BenchmarkRun<'a> {
    pub name: &'a str,
    /// Its question file (also the scorer's `--questions`).
    pub questions: &'a Path,
    /// Where the question file's image paths start.
    pub images: &'a Path,
    /// Its release files; `None`: answer only.
    pub annotations: Option<&'a Path>,
    pub convention: vlmkit_benchmarks::Convention,
    pub batch_size: usize,
    /// Default: LLaVA's for the benchmark.
    pub max_new_tokens: Option<usize>,
    /// Answer only the first this many questions (no score then).
    pub limit: Option<usize>,
}

/// What [`run_benchmark`] did.
#[derive(Debug)]
pub struct BenchmarkResult {
    /// `answers.jsonl`.
    pub answers: PathBuf,
    pub answered: usize,
    pub unanswered: Vec<String>,
    pub seconds: f64,
    pub batch_size: usize,
    pub max_new_tokens: usize,
    /// The score (or submission), with annotations.
    pub outcome: Option<vlmkit_benchmarks::Outcome>,
}

/// Answers `run`'s questions with `model` into `out/answers.jsonl` and, with
/// annotations, scores them. `on_start` hears the number of questions.
pub fn run_benchmark(
    model: &LoadedModel,
    run: &BenchmarkRun<'_>,
    out: &Path,
    model_id: &str,
    on_batch: impl FnMut(usize, usize),
) -> Result<BenchmarkResult, EvalError> {
    let registry = vlmkit_benchmarks::BenchmarkRegistry::default();
    let benchmark = registry.get(run.name).ok_or_else(|| EvalError::Benchmark {
        path: run.questions.to_path_buf(),
        message: format!(
            "unknown benchmark `{}`; known: {}",
            run.name,
            registry.names().collect::<Vec<_>>().join(", ")
        ),
    })?;
    let mut questions = benchmark
        .questions(run.questions)
        .map_err(EvalError::from)?;
    if let Some(limit) = run.limit {
        questions.truncate(limit);
    }
    let max_new_tokens = run.max_new_tokens.unwrap_or(benchmark.max_new_tokens());
    std::fs::create_dir_all(out).map_err(|source| EvalError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let started = std::time::Instant::now();
    let answers = answer_benchmark(
        model,
        &questions,
        run.images,
        run.batch_size,
        max_new_tokens,
        model_id,
        on_batch,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let path = write_answers(&out.join("answers.jsonl"), &answers.lines)?;
    let outcome = match run.annotations {
        Some(annotations) if run.limit.is_none() => {
            let answer_file = vlmkit_benchmarks::AnswerFile::read(&path)?;
            Some(registry.score(
                run.name,
                &vlmkit_benchmarks::Inputs {
                    answers: &answer_file,
                    annotations: Some(annotations),
                    questions: Some(run.questions),
                    convention: run.convention,
                },
            )?)
        }
        _ => None,
    };
    Ok(BenchmarkResult {
        answers: path,
        answered: answers.lines.len(),
        unanswered: answers.unanswered,
        seconds,
        batch_size: run.batch_size,
        max_new_tokens,
        outcome,
    })
}

/// Writes what scoring gave: a submission's file at `submission` (its
/// directory made; required for a submission), then, with `json`, the JSON
/// report (`vlmkit score --json`'s). Returns the report.
pub fn save_outcome(
    outcome: &vlmkit_benchmarks::Outcome,
    convention: vlmkit_benchmarks::Convention,
    submission: Option<&Path>,
    json: Option<&Path>,
) -> Result<serde_json::Value, EvalError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EvalError::Io { path, source }
    };
    if let Some(contents) = outcome.submission().map(|s| &s.contents) {
        let path = submission.expect("a submission is written where the caller says");
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        vlmkit_core::fsutil::write_atomic(path, contents).map_err(io(path))?;
    }
    let report = outcome.report(convention, submission);
    if let Some(path) = json {
        let mut text = serde_json::to_string_pretty(&report).expect("reports serialise");
        text.push('\n');
        vlmkit_core::fsutil::write_atomic(path, text.as_bytes()).map_err(io(path))?;
    }
    Ok(report)
}
