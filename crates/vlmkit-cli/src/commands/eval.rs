//! `vlmkit eval RUN_OR_CHECKPOINT`: per-family accuracy on the recipe's eval split.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use vlmkit_eval::{evaluate_and_save, EvalOptions};
use vlmkit_train::load_model;

use crate::common;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A run directory (its final model, else its newest checkpoint) or a checkpoint directory.
    pub model: PathBuf,
    /// Evaluate at most this many examples.
    #[arg(long)]
    pub samples: Option<u64>,
    /// Generation batch size (default: the recipe's `eval.batch_size`).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Longest answer generated (default: the recipe's `eval.max_new_tokens`).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Where to write predictions.jsonl, report.json and accuracy.png (default: `<checkpoint>/eval`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Device to run on (default: the recipe's).
    #[arg(long)]
    pub device: Option<String>,
    /// Override a key of the model's saved recipe, e.g. `--set data.eval.samples=5000`
    /// or `--set 'data.eval.families={existence=1}'` (evaluation settings only).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let model = load_model(
        &args.model,
        &common::registry()?,
        args.device.as_deref(),
        &args.overrides,
    )?;
    let source = model.plan.eval_data()?.open()?;
    let defaults = EvalOptions::from_config(&model.plan.recipe.eval);
    let opts = EvalOptions {
        batch_size: args.batch_size.unwrap_or(defaults.batch_size),
        max_new_tokens: args.max_new_tokens.unwrap_or(defaults.max_new_tokens),
        limit: args.samples.or(defaults.limit),
    };
    eprintln!(
        "evaluating {} on {}",
        model.dir.display(),
        source.describe()
    );
    let out = args.out.unwrap_or_else(|| model.dir.join("eval"));
    let title = format!(
        "{}: accuracy per question family",
        model.plan.recipe.run.name
    );
    let report = evaluate_and_save(
        &model,
        source.as_ref(),
        &opts,
        &out,
        &title,
        |done, total| {
            eprint!("\r  {done}/{total}");
        },
    )?;
    eprintln!();
    print!("{}", report.table());
    eprintln!(
        "wrote {}/{{predictions.jsonl, report.json, accuracy.png}}",
        out.display()
    );
    Ok(())
}
