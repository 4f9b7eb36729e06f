//! The training loop: a run's stages in order, each building the model with its
//! trainable set, reading its data in its seeded order, accumulating gradients,
//! clipping, stepping AdamW, logging and checkpointing — resuming exactly where a
//! previous process stopped.
//!
//! - [`resume`]: where a run starts (fresh, or its newest checkpoint);
//! - [`stage`]: one stage's steps, their logging and checkpoints;
//! - [`reader`]: a stage's examples in order, bad ones skipped and counted;
//! - [`checks`]: what stops a run (non-finite numbers, unreached parameters);
//! - [`checkpointing`]: what a checkpoint holds;
//! - [`metrics`]: `metrics.jsonl`'s records and the loss curve;
//! - [`jsonl`]: the run's JSON-lines logs, kept in step with its checkpoints;
//! - [`observer`]: what the loop reports.

mod checkpointing;
mod checks;
mod jsonl;
pub mod metrics;
mod observer;
mod reader;
mod resume;
mod stage;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use vlmkit_core::params::ParamStore;
use vlmkit_pipeline::checkpoint::{read_state, CheckpointError, STATE_FILE};
use vlmkit_pipeline::{describe_device, select_device, Plan, RunDir, TrainState};

pub use metrics::{plot_losses, read_metrics, MetricsRecord};
pub use observer::{Observer, Silent, Skip, StepRecord, TrainSummary};
pub use stage::StageModel;

use crate::step::Parallelism;
use crate::TrainError;
use checkpointing::Checkpointer;
use jsonl::JsonLines;
use resume::Start;

/// Worker threads for `run.threads` (0 = every core).
pub fn worker_threads(threads: usize) -> usize {
    if threads > 0 {
        threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// A run in progress: what every stage reads and advances.
struct Trainer<'p> {
    plan: &'p Plan,
    store: &'p ParamStore,
    device: Device,
    observer: &'p mut dyn Observer,
    checkpointer: Checkpointer<'p>,
    parallelism: Parallelism,
    started: Instant,
    /// Where the run stands (what a checkpoint records).
    state: TrainState,
    /// A resumed stage's optimizer state, until that stage takes it.
    optimizer_state: Option<std::collections::BTreeMap<String, Tensor>>,
    metrics: JsonLines,
    skips: JsonLines,
    last_checkpoint: Option<PathBuf>,
    last_loss: Option<f64>,
    /// Prefixes of parameters no gradient can reach.
    unused: Vec<String>,
}

/// Trains `plan` into `run`, resuming from its newest checkpoint if it has one.
pub fn train(
    plan: &Plan,
    run: &RunDir,
    observer: &mut dyn Observer,
) -> Result<TrainSummary, TrainError> {
    let started = Instant::now();
    // One process trains in a run directory; held until this function returns.
    let lock = run.lock()?;
    let removed = run.remove_leftovers(&lock)?;
    if !removed.is_empty() {
        observer.message(&format!(
            "removed {} leftover(s) of an interrupted process, e.g. {}",
            removed.len(),
            removed[0].display()
        ));
    }
    // Finished or not, a run directory holds one recipe's run.
    run.check_recipe(&plan.run_recipe_toml())?;
    if let Some(finished) = finished_run(plan, run)? {
        return Ok(finished);
    }
    let requested = &plan.recipe.run.device;
    let device = select_device(requested)?;
    if requested == "auto" || !device.is_cpu() {
        observer.message(&describe_device(requested, &device));
    }
    let store = ParamStore::new(device.clone(), DType::F32);
    let start = Start::open(plan, run, &store, observer)?;
    let resumed_from = start.checkpoint.as_ref().map(|_| start.state.global_step);
    let mut trainer = Trainer {
        plan,
        store: &store,
        device,
        observer,
        checkpointer: Checkpointer::new(plan, run)?,
        parallelism: Parallelism::new(worker_threads(plan.recipe.run.threads)),
        started,
        state: start.state,
        optimizer_state: start.optimizer,
        metrics: start.metrics,
        skips: start.skips,
        last_checkpoint: start.checkpoint,
        last_loss: None,
        unused: start.unused,
    };
    for stage in trainer.state.stage..plan.recipe.stages.len() {
        trainer.run_stage(stage)?;
    }
    let final_dir = trainer.finish(run)?;
    Ok(TrainSummary {
        run_dir: run.path.clone(),
        final_dir,
        global_step: trainer.state.global_step,
        resumed_from,
        last_loss: trainer.last_loss,
        seconds: started.elapsed().as_secs_f64(),
        already_complete: false,
        skipped: trainer.state.skipped,
        truncated: trainer.state.truncated,
    })
}

/// The summary of a run directory that already holds a finished run of `plan`.
fn finished_run(plan: &Plan, run: &RunDir) -> Result<Option<TrainSummary>, TrainError> {
    let state_file = run.final_dir().join(STATE_FILE);
    if !state_file.is_file() {
        return Ok(None);
    }
    let state = read_state(&run.final_dir())?;
    state.check(&plan.recipe, &state_file)?;
    if state.stage != plan.recipe.stages.len() {
        return Err(
            vlmkit_pipeline::PipelineError::from(CheckpointError::ForeignState {
                path: state_file,
                reason: format!(
                    "a final model at stage {} of {}",
                    state.stage,
                    plan.recipe.stages.len()
                ),
            })
            .into(),
        );
    }
    Ok(Some(TrainSummary {
        run_dir: run.path.clone(),
        final_dir: run.final_dir(),
        global_step: state.global_step,
        resumed_from: None,
        last_loss: None,
        seconds: 0.0,
        already_complete: true,
        skipped: state.skipped,
        truncated: state.truncated,
    }))
}

impl Trainer<'_> {
    /// The final model, and the loss curve.
    fn finish(&mut self, run: &RunDir) -> Result<PathBuf, TrainError> {
        let final_dir = self.checkpointer.save_final(self.store, &self.state)?;
        if let Ok(records) = read_metrics(&run.metrics()) {
            if !records.is_empty() {
                plot_losses(
                    &records,
                    &format!("{}: training loss", self.plan.recipe.run.name),
                    &run.loss_plot(),
                )?;
            }
        }
        Ok(final_dir)
    }
}
