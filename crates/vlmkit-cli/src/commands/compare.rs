//! `vlmkit compare RECIPE…`: recipes side by side over seeds, one report.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use vlmkit_study::{
    PlannedRun, RunAction, RunState, Study, StudyError, StudyKind, StudyObserver, StudySpec,
};
use vlmkit_train::progress::Progress;
use vlmkit_train::Observer;

use crate::common;

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The recipes (TOML), one row of the report each.
    #[arg(required = true)]
    pub recipes: Vec<PathBuf>,
    /// Seeds per recipe: `run.seed`, `run.seed + 1`, … from each recipe's own
    /// `run.seed` (after `--set`).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub seeds: usize,
    /// Override a key of every recipe, e.g. `--set stage.0.steps=1000`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Study directory: reports at its top, runs under `runs/<recipe>/seed-<s>/`
    /// (default: `studies/<name>-vs-<name>…`). Finished runs in it are reused.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Validate every recipe and list the runs and their state; train nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(args: CompareArgs) -> Result<()> {
    let spec = StudySpec::compare(&args.recipes, &args.overrides, args.seeds, command_line())
        .map_err(study_error)?;
    run_study(spec, args.out, args.dry_run)
}

/// Plans the study (every recipe validated), then trains, evaluates or reuses
/// each run and writes the report; `dry_run` stops after listing the runs.
pub fn run_study(spec: StudySpec, out: Option<PathBuf>, dry_run: bool) -> Result<()> {
    let dir = out.unwrap_or_else(|| PathBuf::from("studies").join(&spec.name));
    let study = Study::plan(spec, &dir, &common::components()?)
        .map_err(study_error)?
        .release_memory_with(release_cached_memory);
    let states = study.states().map_err(study_error)?;
    let count = |f: fn(&RunState) -> bool| states.iter().filter(|s| f(s)).count();
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let arms = match study.spec.kind {
        StudyKind::Compare => plural(study.spec.arms.len(), "recipe", "recipes"),
        StudyKind::Sweep => plural(study.spec.arms.len(), "grid point", "grid points"),
    };
    eprintln!(
        "study `{}`: {arms} × {} = {} runs in {} ({} to train, {} to evaluate, {} finished)",
        study.spec.name,
        plural(study.spec.seeds, "seed", "seeds"),
        study.runs.len(),
        dir.display(),
        count(|s| matches!(s, RunState::New | RunState::Partial { .. })),
        count(|s| matches!(s, RunState::Trained)),
        count(|s| matches!(s, RunState::Evaluated)),
    );
    if dry_run {
        let total = study.runs.len();
        for (i, (run, state)) in study.runs.iter().zip(&states).enumerate() {
            let what = match state {
                RunState::New => "to train".to_string(),
                RunState::Partial { step } => format!("to resume from step {step}"),
                RunState::Trained => "trained, to evaluate".to_string(),
                RunState::Evaluated => "finished, reused".to_string(),
            };
            println!("[{}/{total}] {}: {what}", i + 1, run.label());
        }
        return Ok(());
    }
    let mut observer = CliObserver {
        progress: Progress::new(),
    };
    let report = study.run(&mut observer).map_err(study_error)?;
    print!("{}", report.markdown());
    eprintln!(
        "wrote {}/{{report.md, report.csv, runs.csv, study.json, accuracy.png}}",
        dir.display()
    );
    Ok(())
}

/// Hands the memory mimalloc (this binary's allocator, see `main.rs`) keeps
/// cached back to the operating system, so that a run's peak resident memory
/// does not include what earlier runs of the same study left cached.
fn release_cached_memory() {
    unsafe extern "C" {
        // mimalloc's C API, linked in through the `mimalloc` crate.
        fn mi_collect(force: bool);
    }
    // Freed pages are kept while training (`configure_allocator`); purge them
    // now, then keep them again.
    crate::common::set_purge_delay(0);
    // SAFETY: `mi_collect` takes no pointers, frees only memory no allocation
    // uses, and may be called from any thread at any time.
    unsafe { mi_collect(true) }
    crate::common::set_purge_delay(crate::common::steady_purge_delay());
}

/// Recipe problems print as located diagnostics, like everywhere else.
pub fn study_error(error: StudyError) -> anyhow::Error {
    match error {
        StudyError::Recipe(e) => anyhow::Error::new(*e),
        other => anyhow::Error::new(other),
    }
}

/// `vlmkit ARGS…` as typed, quoted for a POSIX shell where needed (the program
/// is named `vlmkit` whatever path ran it, so reports do not depend on it).
pub fn command_line() -> String {
    std::iter::once("vlmkit".to_string())
        .chain(
            std::env::args_os()
                .skip(1)
                .map(|a| shell_quote(&a.to_string_lossy())),
        )
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@%".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Progress lines (`[3/12] ccra seed 2: training`), the trainer's progress display
/// and the evaluation's counter, on stderr.
struct CliObserver {
    progress: Progress,
}

impl StudyObserver for CliObserver {
    fn run_action(&mut self, position: usize, total: usize, run: &PlannedRun, action: RunAction) {
        let what = match action {
            RunAction::Reuse => "reused (trained and evaluated before)".to_string(),
            RunAction::Train => {
                self.progress = Progress::new();
                "training".to_string()
            }
            RunAction::Resume { step } => {
                self.progress = Progress::new();
                format!("training (resuming from step {step})")
            }
            RunAction::Evaluate => "evaluating".to_string(),
        };
        eprintln!(
            "[{position}/{total}] {}: {what} ({})",
            run.label(),
            run.dir.display()
        );
    }

    fn trainer(&mut self) -> &mut dyn Observer {
        &mut self.progress
    }

    fn eval_progress(&mut self, done: usize, total: usize) {
        eprint!("\r  {done}/{total}");
        if done == total {
            eprintln!();
        }
    }
}
