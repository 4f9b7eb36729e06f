//! `vlmkit params RECIPE`: parameter counts per component, trainable or frozen.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use vlmkit_pipeline::counts::ParamCounts;

use crate::common;

#[derive(Debug, Args)]
pub struct ParamsArgs {
    /// The recipe (TOML).
    pub recipe: PathBuf,
    /// Override a recipe key (`KEY=VALUE`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Which stage's trainable set to report (0-based).
    #[arg(long, default_value_t = 0)]
    pub stage: usize,
    /// Print the table as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ParamsArgs) -> Result<()> {
    let plan = common::inspect_plan(&args.recipe, &args.overrides)?;
    let counts = ParamCounts::of(&plan, args.stage)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&counts.rows)?);
    } else {
        print!("{}", counts.table());
    }
    Ok(())
}
