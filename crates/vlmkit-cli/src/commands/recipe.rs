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
            let plan = common::plan(&args.recipe, &args.overrides)?;
            print!("{}", plan.recipe.to_toml_string());
            let needs = &plan.needs;
            eprintln!(
                "ok: connector `{}` ({:?}, reads text: {}), vision layers {:?}, tokenizer of {} tokens",
                plan.connector.factory.kind(),
                needs.placement,
                needs.reads_text,
                plan.env.layers,
                plan.tokenizer.vocab_size()
            );
            Ok(())
        }
    }
}
