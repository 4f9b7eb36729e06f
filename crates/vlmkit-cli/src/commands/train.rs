//! `vlmkit train RECIPE`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use vlmkit_pipeline::RunDir;
use vlmkit_train::progress::Progress;
use vlmkit_train::train;

use crate::common;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The recipe (TOML).
    pub recipe: PathBuf,
    /// Override a recipe key, e.g. `--set run.seed=1` or `--set stage.0.lr=1e-3`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Run directory (default: `<run.output_dir>/<run.name>`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let plan = common::plan(&args.recipe, &args.overrides)?;
    let dir = args
        .out
        .unwrap_or_else(|| plan.recipe.run.output_dir.join(&plan.recipe.run.name));
    let run = RunDir::new(dir);
    let mut progress = Progress::new(plan.recipe.run.log_every);
    let summary = train(&plan, &run, &mut progress)?;
    if summary.already_complete {
        eprintln!(
            "{} already holds a finished run ({} steps); nothing to do. Evaluate it with `vlmkit eval {}`",
            run.path.display(),
            summary.global_step,
            summary.final_dir.display()
        );
        return Ok(());
    }
    eprintln!(
        "trained {} steps in {:.1}s; final loss {:.4}; model in {}",
        summary.global_step,
        summary.seconds,
        summary.last_loss.unwrap_or(f64::NAN),
        summary.final_dir.display()
    );
    if summary.skipped_images > 0 {
        eprintln!(
            "skipped {} example{} whose image was missing or corrupt",
            summary.skipped_images,
            if summary.skipped_images == 1 { "" } else { "s" }
        );
    }
    Ok(())
}
