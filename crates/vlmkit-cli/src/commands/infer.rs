//! `vlmkit infer RUN_OR_CHECKPOINT --image PATH "question"`, or a recipe's model
//! before training (`vlmkit infer RECIPE.toml "question"`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use vlmkit_core::GenerateOptions;
use vlmkit_data::Example;
use vlmkit_eval::generate_answers;

use crate::common;

#[derive(Debug, Args)]
pub struct InferArgs {
    /// A run directory or a checkpoint directory; or a recipe, whose model is built
    /// as training would start it (pretrained parts from their checkpoints, the
    /// rest from the seed), e.g. to ask its pretrained language model something.
    pub model: PathBuf,
    /// The question.
    pub question: String,
    /// The image (PNG, JPEG, …); without it the model answers from text alone.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Longest answer generated.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens with this much probability.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Device to run on (default: the recipe's).
    #[arg(long)]
    pub device: Option<String>,
}

pub fn run(args: InferArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&args.top_p) || args.top_p == 0.0 {
        anyhow::bail!("--top-p must be in (0, 1], got {}", args.top_p);
    }
    // `!(t >= 0)` also refuses NaN, which every comparison is false for.
    if !(args.temperature.is_finite() && args.temperature >= 0.0) {
        anyhow::bail!(
            "--temperature must be a finite number ≥ 0 (0 is greedy), got {}",
            args.temperature
        );
    }
    let image = match &args.image {
        Some(path) => Some(
            image::open(path)
                .with_context(|| format!("{}: not a readable image", path.display()))?
                .to_rgb8(),
        ),
        None => None,
    };
    let model = common::model_or_recipe(&args.model, args.device.as_deref(), &[])?;
    let example = Example::single_turn("infer", image, &args.question, "");
    let gen = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        stop_ids: Vec::new(),
    };
    let answers = generate_answers(&model, &[example], &gen)?;
    println!("{}", answers[0]);
    Ok(())
}
