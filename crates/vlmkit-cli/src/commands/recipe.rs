//! `vlmkit recipe check RECIPE`: validate and print the resolved recipe.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::common;

#[derive(Debug, Args)]
pub struct RecipeArgs {
    #[command(subcommand)]
    pub command: RecipeCommand,
}

#[derive(Debug, Subcommand)]
pub enum RecipeCommand {
    /// Validate a recipe (every component, the connector's needs, the data) and print it resolved.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The recipe (TOML).
    pub recipe: PathBuf,
    /// Override a recipe key (`KEY=VALUE`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

pub fn run(args: RecipeArgs) -> Result<()> {
    match args.command {
        RecipeCommand::Check(args) => {
            let plan = common::inspect_plan(&args.recipe, &args.overrides)?;
            print!("{}", plan.recipe.to_toml_string());
            let needs = &plan.model.needs;
            let vocabulary = match plan.tokenizer() {
                Ok(tokenizer) => format!("tokenizer of {} tokens", tokenizer.vocab_size()),
                Err(_) => format!(
                    "vocabulary of {} tokens (from the recipe)",
                    plan.model.llm.config.vocab_size
                ),
            };
            eprintln!(
                "ok: connector `{}` ({:?}, reads text: {}), vision layers {:?}, {vocabulary}",
                plan.model.connector.kind(),
                needs.placement,
                needs.reads_text,
                plan.model.env.layers,
            );
            // What each stage trains and on which losses (a connector's own terms
            // included with their default weight).
            for stage in &plan.recipe.stages {
                let losses: Vec<String> = plan
                    .stages
                    .loss_weights(stage)
                    .iter()
                    .map(|(name, weight)| format!("{name} {weight}"))
                    .collect();
                eprintln!(
                    "stage `{}`: {} steps, trains {} at lr {}, losses {}",
                    stage.name,
                    stage
                        .steps
                        .map_or_else(|| "epoch-based".to_string(), |s| s.to_string()),
                    stage.trainable.join(", "),
                    stage.lr_summary(),
                    losses.join(", ")
                );
            }
            // Settings are valid; whether the named files are here is a separate
            // question (they need not be, to inspect a recipe).
            for (key, path) in plan.external_paths() {
                let state = if path.exists() { "found" } else { "missing" };
                eprintln!("{state}: {key} = {}", path.display());
            }
            Ok(())
        }
    }
}
