//! Running a trained model over an eval split.

use vlmkit_core::GenerateOptions;
use vlmkit_data::Example;
use vlmkit_train::source::ExampleSource;
use vlmkit_train::{LoadedModel, TrainError};

use crate::score::{normalize_answer, Prediction};

/// How to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub batch_size: usize,
    pub max_new_tokens: usize,
    /// Evaluate at most this many examples (the split's first ones).
    pub limit: Option<u64>,
}

/// Generates an answer to the first question of each example (greedy unless
/// `gen` says otherwise).
pub fn generate_answers(
    model: &LoadedModel,
    examples: &[Example],
    gen: &GenerateOptions,
) -> Result<Vec<String>, TrainError> {
    let batch = model
        .plan
        .batch_builder(model.vlm.device.clone())?
        .prompts(examples)?;
    let tok = model.plan.tokenizer()?;
    let mut gen = gen.clone();
    if !gen.stop_ids.contains(&tok.eos) {
        gen.stop_ids.push(tok.eos);
    }
    let ids = model.vlm.generate(&batch.pixels, &batch.sequences, &gen)?;
    ids.iter().map(|ids| Ok(tok.decode(ids)?)).collect()
}

/// Answers every example of `source` and marks each answer right or wrong.
pub fn evaluate(
    model: &LoadedModel,
    source: &dyn ExampleSource,
    opts: &EvalOptions,
    mut on_batch: impl FnMut(usize, usize),
) -> Result<Vec<Prediction>, TrainError> {
    let n = opts.limit.map_or(source.len(), |l| l.min(source.len()));
    let gen = GenerateOptions {
        max_new_tokens: opts.max_new_tokens,
        ..GenerateOptions::default()
    };
    let mut predictions = Vec::with_capacity(n as usize);
    let mut start = 0u64;
    while start < n {
        let end = (start + opts.batch_size as u64).min(n);
        let examples = (start..end)
            .map(|i| source.get(i))
            .collect::<Result<Vec<_>, _>>()?;
        let answers = generate_answers(model, &examples, &gen)?;
        for (ex, prediction) in examples.iter().zip(answers) {
            let answer = ex.answer().unwrap_or_default().to_string();
            predictions.push(Prediction {
                id: ex.id.clone(),
                family: ex.family.clone().unwrap_or_else(|| "all".into()),
                pope: ex.meta.get("pope").cloned(),
                question: ex.question().unwrap_or_default(),
                options: ex
                    .meta
                    .get("options")
                    .map(|o| o.split('|').map(str::to_string).collect())
                    .unwrap_or_default(),
                correct: normalize_answer(&answer) == normalize_answer(&prediction),
                answer,
                prediction,
            });
        }
        on_batch(end as usize, n as usize);
        start = end;
    }
    Ok(predictions)
}
