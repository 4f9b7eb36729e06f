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
    let mut progress = Progress::new();
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
    eprint!("{}", report(&run, &summary));
    Ok(())
}

/// Where a finished run's outputs are and what to run next.
fn report(run: &RunDir, summary: &vlmkit_train::TrainSummary) -> String {
    let plural = |n: u64| if n == 1 { "" } else { "s" };
    let mut text = format!(
        "trained {} steps in {:.1}s; the last step's loss {:.4}\n",
        summary.global_step,
        summary.seconds,
        summary.last_loss.unwrap_or(f64::NAN),
    );
    let mut line = |what: &str, value: String| text.push_str(&format!("  {what:<11} {value}\n"));
    line("model", summary.final_dir.display().to_string());
    line("metrics", run.metrics().display().to_string());
    if run.loss_plot().exists() {
        line("loss curve", run.loss_plot().display().to_string());
    }
    if summary.skipped > 0 {
        line(
            "skipped",
            format!(
                "{} example{} that could not be used, listed in {}",
                summary.skipped,
                plural(summary.skipped),
                run.skipped().display()
            ),
        );
    }
    if summary.truncated > 0 {
        line(
            "truncated",
            format!(
                "{} example{} cut to the model's length (its answers kept)",
                summary.truncated,
                plural(summary.truncated)
            ),
        );
    }
    text.push_str(&format!("next: vlmkit eval {}\n", run.path.display()));
    text
}
