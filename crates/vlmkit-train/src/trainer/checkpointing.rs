//! What goes into a checkpoint, and writing it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use vlmkit_core::params::ParamStore;
use vlmkit_pipeline::checkpoint::CheckpointContents;
use vlmkit_pipeline::{source_fingerprint, FrozenSource, Plan, RunDir, TrainState};

use crate::optim::AdamW;
use crate::TrainError;

/// Writes a run's checkpoints. Pretrained parts no stage has trained yet are
/// left out and named by their source, identified once here.
pub(super) struct Checkpointer<'a> {
    plan: &'a Plan,
    run: &'a RunDir,
    recipe_toml: String,
    tokenizer_json: String,
    sources: BTreeMap<&'static str, FrozenSource>,
}

impl<'a> Checkpointer<'a> {
    pub(super) fn new(plan: &'a Plan, run: &'a RunDir) -> Result<Self, TrainError> {
        let sources = plan
            .model
            .pretrained_parts()
            .into_iter()
            .map(|(part, path)| {
                let fingerprint = source_fingerprint(path)?;
                let path = path.to_path_buf();
                Ok((part, FrozenSource { path, fingerprint }))
            })
            .collect::<Result<BTreeMap<_, _>, TrainError>>()?;
        Ok(Self {
            plan,
            run,
            recipe_toml: plan.run_recipe_toml(),
            tokenizer_json: plan.tokenizer()?.to_json()?,
            sources,
        })
    }

    fn contents(
        &self,
        store: &ParamStore,
        optimizer: Option<&AdamW>,
        state: &TrainState,
    ) -> Result<CheckpointContents, TrainError> {
        let frozen = self.plan.frozen_pretrained_parts(state.stage);
        let in_frozen = |name: &str| {
            frozen
                .iter()
                .any(|part| name.strip_prefix(part).is_some_and(|r| r.starts_with('.')))
        };
        let mut state = state.clone();
        state.frozen_sources = frozen
            .iter()
            .map(|part| (part.to_string(), self.sources[part].clone()))
            .collect();
        Ok(CheckpointContents {
            model: store.to_cpu_tensors(|name| !in_frozen(name))?,
            optimizer: match optimizer {
                Some(o) => o.state_tensors()?,
                None => BTreeMap::new(),
            },
            state,
            recipe_toml: self.recipe_toml.clone(),
            tokenizer_json: self.tokenizer_json.clone(),
        })
    }

    /// A checkpoint of where the run stands (`optimizer`: mid-stage, its state
    /// saved too), the oldest beyond `run.keep_checkpoints` pruned.
    pub(super) fn save(
        &self,
        store: &ParamStore,
        optimizer: Option<&AdamW>,
        state: &TrainState,
    ) -> Result<PathBuf, TrainError> {
        let contents = self.contents(store, optimizer, state)?;
        refuse_non_finite(&contents, state)?;
        Ok(self
            .run
            .save_checkpoint(&contents, self.plan.recipe.run.keep_checkpoints)?)
    }

    /// The final model (no optimizer state).
    pub(super) fn save_final(
        &self,
        store: &ParamStore,
        state: &TrainState,
    ) -> Result<PathBuf, TrainError> {
        let contents = self.contents(store, None, state)?;
        refuse_non_finite(&contents, state)?;
        Ok(self.run.save_final(&contents)?)
    }
}

/// A checkpoint is only written of finite weights: the last one written is the
/// last good one a non-finite stop names.
fn refuse_non_finite(contents: &CheckpointContents, state: &TrainState) -> Result<(), TrainError> {
    match vlmkit_pipeline::first_non_finite(&contents.model)? {
        None => Ok(()),
        Some(name) => Err(TrainError::NonFiniteWeights {
            step: state.global_step,
            name,
        }),
    }
}
