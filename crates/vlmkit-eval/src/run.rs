//! Running a trained model over an eval split, and writing what it gives.

use std::io::Write;
use std::path::Path;

use vlmkit_core::{GenerateOptions, TokenSequence};
use vlmkit_data::Example;
use vlmkit_pipeline::batch::BatchBuilder;
use vlmkit_pipeline::data::ExampleSource;
use vlmkit_pipeline::LoadedModel;

use crate::{score_with, AnswerMatch, EvalError, EvalReport, Prediction, ScorerRegistry};

/// How to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub batch_size: usize,
    pub max_new_tokens: usize,
    /// Evaluate at most this many examples (the split's first ones).
    pub limit: Option<u64>,
    pub answers: AnswerMatch,
    /// What scores the answers (and which example metadata the predictions keep).
    pub scorers: ScorerRegistry,
}

impl EvalOptions {
    /// The recipe's `[eval]` settings.
    pub fn from_config(config: &vlmkit_recipe::EvalConfig) -> Self {
        EvalOptions {
            batch_size: config.batch_size,
            max_new_tokens: config.max_new_tokens,
            limit: config.samples,
            answers: AnswerMatch::Exact,
            scorers: ScorerRegistry::default(),
        }
    }
}

/// The files an evaluation writes into its directory.
pub const PREDICTIONS_FILE: &str = "predictions.jsonl";
pub const REPORT_FILE: &str = "report.json";
pub const CHART_FILE: &str = "accuracy.png";

/// Reads a `predictions.jsonl` back; a line that is not a prediction is an
/// `InvalidData` error naming its number.
pub fn read_predictions(path: &Path) -> std::io::Result<Vec<Prediction>> {
    std::fs::read_to_string(path)?
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("line {}: {e}", i + 1),
                )
            })
        })
        .collect()
}

/// Writes `predictions.jsonl`, `accuracy.png` (titled `title`) and, last,
/// `report.json` into `dir`, each atomically: a directory with a report holds
/// the other two.
pub fn save_outputs(
    dir: &Path,
    title: &str,
    predictions: &[Prediction],
    report: &EvalReport,
) -> Result<(), EvalError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EvalError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut jsonl = Vec::new();
    for p in predictions {
        let line = serde_json::to_string(p).expect("predictions serialise");
        writeln!(jsonl, "{line}").expect("writing to memory");
    }
    let path = dir.join(PREDICTIONS_FILE);
    vlmkit_core::fsutil::write_atomic(&path, &jsonl).map_err(io(&path))?;
    let path = dir.join(CHART_FILE);
    report
        .save_chart(title, &path)
        .map_err(|e| EvalError::Plot {
            path: path.clone(),
            message: e.to_string(),
        })?;
    let path = dir.join(REPORT_FILE);
    let json = serde_json::to_string_pretty(report).expect("reports serialise");
    vlmkit_core::fsutil::write_atomic(&path, json.as_bytes()).map_err(io(&path))?;
    Ok(())
}

/// Generates an answer to the first question of each example (greedy unless
/// `gen` says otherwise).
pub fn generate_answers(
    model: &LoadedModel,
    examples: &[Example],
    gen: &GenerateOptions,
) -> Result<Vec<String>, EvalError> {
    let builder = model.plan.batch_builder(model.vlm.device.clone())?;
    let prompts = examples
        .iter()
        .map(|e| builder.collator.prompt(e))
        .collect::<Result<Vec<_>, _>>()?;
    answer_prompts(model, &builder, examples, prompts, gen)
}

/// Answers to `prompts`, the tokenised prompts of `examples`.
fn answer_prompts(
    model: &LoadedModel,
    builder: &BatchBuilder,
    examples: &[Example],
    prompts: Vec<TokenSequence>,
    gen: &GenerateOptions,
) -> Result<Vec<String>, EvalError> {
    let batch = builder.assemble(examples, prompts)?;
    let tok = model.plan.tokenizer()?;
    let mut gen = gen.clone();
    if !gen.stop_ids.contains(&tok.eos) {
        gen.stop_ids.push(tok.eos);
    }
    let ids = model.vlm.generate(&batch.pixels, &batch.sequences, &gen)?;
    ids.iter().map(|ids| Ok(tok.decode(ids)?)).collect()
}

/// The model's reply to each of `examples` (one batch), or why it was not
/// asked: a prompt the model has no room for is not asked (cut, it would end
/// before the answer's cue); it stays in the benchmark, wrong.
pub(crate) fn ask(
    model: &LoadedModel,
    builder: &BatchBuilder,
    examples: &[Example],
    gen: &GenerateOptions,
) -> Result<Vec<Result<String, String>>, EvalError> {
    let mut unfit: Vec<Option<String>> = Vec::with_capacity(examples.len());
    let (mut asked, mut prompts) = (Vec::new(), Vec::new());
    for example in examples {
        match builder.collator.prompt(example) {
            Ok(prompt) => {
                asked.push(example.clone());
                prompts.push(prompt);
                unfit.push(None);
            }
            Err(vlmkit_data::DataError::Unusable { reason, .. }) => unfit.push(Some(reason)),
            Err(other) => return Err(other.into()),
        }
    }
    let mut answers = if asked.is_empty() {
        Vec::new()
    } else {
        answer_prompts(model, builder, &asked, prompts, gen)?
    }
    .into_iter();
    Ok(unfit
        .into_iter()
        .map(|reason| match reason {
            Some(reason) => Err(reason),
            None => Ok(answers.next().unwrap_or_default()),
        })
        .collect())
}

/// Answers every example of `source` and marks each answer right or wrong.
pub fn evaluate(
    model: &LoadedModel,
    source: &dyn ExampleSource,
    opts: &EvalOptions,
    mut on_batch: impl FnMut(usize, usize),
) -> Result<Vec<Prediction>, EvalError> {
    let n = opts.limit.map_or(source.len(), |l| l.min(source.len()));
    let gen = GenerateOptions {
        max_new_tokens: opts.max_new_tokens,
        ..GenerateOptions::default()
    };
    let builder = model.plan.batch_builder(model.vlm.device.clone())?;
    let mut predictions = Vec::with_capacity(n as usize);
    let mut start = 0u64;
    while start < n {
        let end = (start + opts.batch_size as u64).min(n);
        let examples = (start..end)
            .map(|i| source.get(i))
            .collect::<Result<Vec<_>, _>>()?;
        let replies = ask(model, &builder, &examples, &gen)?;
        for (ex, reply) in examples.iter().zip(replies) {
            let (prediction, unanswered) = match reply {
                Ok(reply) => (reply, None),
                Err(reason) => (String::new(), Some(reason)),
            };
            let answer = ex.answer().unwrap_or_default().to_string();
            let options: Vec<String> = ex
                .meta
                .get("options")
                .map(|o| o.split('|').map(str::to_string).collect())
                .unwrap_or_default();
            let (correct, read) = match unanswered {
                Some(_) => (false, None),
                None => opts.answers.judge(&answer, &prediction, &options),
            };
            predictions.push(Prediction {
                id: ex.id.clone(),
                family: ex.family.clone().unwrap_or_else(|| "all".into()),
                tags: opts
                    .scorers
                    .tags()
                    .filter_map(|tag| Some((tag.to_string(), ex.meta.get(tag)?.clone())))
                    .collect(),
                question: ex.question().unwrap_or_default(),
                options,
                correct,
                answer,
                prediction,
                read,
                unanswered,
            });
        }
        on_batch(end as usize, n as usize);
        start = end;
    }
    Ok(predictions)
}

/// What `vlmkit eval` does with a model: answers `source`, scores the answers
/// and writes the outputs into `out` (the chart titled `title`).
pub fn evaluate_and_save(
    model: &LoadedModel,
    source: &dyn ExampleSource,
    opts: &EvalOptions,
    out: &Path,
    title: &str,
    on_batch: impl FnMut(usize, usize),
) -> Result<EvalReport, EvalError> {
    let predictions = evaluate(model, source, opts, on_batch)?;
    let report = score_with(
        &model.dir.display().to_string(),
        &predictions,
        &opts.scorers,
    );
    save_outputs(out, title, &predictions, &report)?;
    Ok(report)
}
