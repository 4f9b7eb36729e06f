//! `vlmkit sweep RECIPE --grid KEY=V1,V2,…`: one recipe over a grid of settings.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use vlmkit_study::{GridAxis, StudySpec};

use super::compare::{command_line, run_study, study_error};

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The recipe (TOML).
    pub recipe: PathBuf,
    /// A recipe key and its values, e.g. `--grid connector.d_hidden=16,32,64`;
    /// several `--grid`s make the cartesian product (commas inside `[…]`, `{…}` or
    /// quotes do not split).
    #[arg(long, required = true, value_name = "KEY=V1,V2,…", value_parser = parse_axis)]
    pub grid: Vec<GridAxis>,
    /// Seeds per grid point: `run.seed`, `run.seed + 1`, … (after `--set`).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub seeds: usize,
    /// Override a recipe key for every point, e.g. `--set stage.0.steps=1000`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Study directory: reports at its top, runs under `runs/<point>/seed-<s>/`
    /// (default: `studies/<name>-sweep-<keys>`). Finished runs in it are reused.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Validate every grid point and list the runs and their state; train nothing.
    #[arg(long)]
    pub dry_run: bool,
}

fn parse_axis(text: &str) -> Result<GridAxis, String> {
    text.parse()
        .map_err(|e: vlmkit_study::StudyError| e.to_string())
}

pub fn run(args: SweepArgs) -> Result<()> {
    let spec = StudySpec::sweep(
        &args.recipe,
        &args.grid,
        &args.overrides,
        args.seeds,
        command_line(),
    )
    .map_err(study_error)?;
    run_study(spec, args.out, args.dry_run)
}
