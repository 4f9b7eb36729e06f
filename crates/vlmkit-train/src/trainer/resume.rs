//! Where a run starts: from nothing, or from its newest checkpoint — in which
//! case everything a step needs (weights, optimizer, data position, the metrics
//! written so far) is exactly what the interrupted process had.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::Tensor;
use vlmkit_core::params::{Missing, ParamStore};
use vlmkit_pipeline::checkpoint::{check_same_recipe, load_checkpoint, STATE_FILE};
use vlmkit_pipeline::{restore_frozen, Plan, RunDir, TrainState};

use super::jsonl::JsonLines;
use super::Observer;
use crate::TrainError;

/// A run ready for its first step, fresh or resumed.
pub(super) struct Start {
    pub state: TrainState,
    /// The optimizer state of the stage in progress, when resumed mid-stage.
    pub optimizer: Option<BTreeMap<String, Tensor>>,
    /// The checkpoint it resumed from.
    pub checkpoint: Option<PathBuf>,
    pub metrics: JsonLines,
    pub skips: JsonLines,
    /// Prefixes of parameters no gradient can reach with this layer selection.
    pub unused: Vec<String>,
}

impl Start {
    /// Creates every parameter of `plan` in `store`: read from `run`'s newest
    /// checkpoint (which must be of the same recipe), else from the pretrained
    /// sources and the recipe seed, in which case the resolved recipe is written.
    pub(super) fn open(
        plan: &Plan,
        run: &RunDir,
        store: &ParamStore,
        observer: &mut dyn Observer,
    ) -> Result<Self, TrainError> {
        let recipe_toml = plan.run_recipe_toml();
        let checkpoint = run.latest()?;
        if checkpoint.is_some() && !run.latest_pointer().exists() {
            observer.message(&format!(
                "{} is missing: resuming from the newest complete checkpoint",
                run.latest_pointer().display()
            ));
        }
        let (state, optimizer, kept_lines) = match &checkpoint {
            Some(dir) => {
                let mut ck = load_checkpoint(dir)?;
                check_same_recipe(&run.path, &ck.recipe_toml, &recipe_toml)?;
                ck.state.check(&plan.recipe, &dir.join(STATE_FILE))?;
                restore_frozen(&mut ck, plan)?;
                store.insert_tensors(ck.model)?;
                observer.message(&format!(
                    "resuming from {} (step {})",
                    dir.display(),
                    ck.state.global_step
                ));
                let keep = (ck.state.metrics_lines, ck.state.skipped);
                (ck.state, Some(ck.optimizer), Some(keep))
            }
            None => {
                vlmkit_core::fsutil::write_atomic(&run.recipe(), recipe_toml.as_bytes())
                    .map_err(TrainError::io(&run.recipe()))?;
                (TrainState::fresh(&plan.recipe), None, None)
            }
        };
        let metrics = JsonLines::open(&run.metrics(), kept_lines.map(|k| k.0))?;
        let skips = JsonLines::open(&run.skipped(), kept_lines.map(|k| k.1))?;
        // A resumed run has every parameter in its checkpoint.
        let unused = if checkpoint.is_some() {
            store.begin_build();
            plan.model.create_params(store, Missing::Error)?
        } else {
            plan.create_fresh_params(store)?
        };
        Ok(Self {
            state,
            optimizer,
            checkpoint,
            metrics,
            skips,
            unused,
        })
    }
}
