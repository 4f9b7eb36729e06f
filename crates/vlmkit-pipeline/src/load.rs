//! Reading a trained model back — a checkpoint, or a run's final model — for
//! evaluation, inference, export and studies; and a recipe's model as training
//! would start it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vlmkit_core::params::{Missing, ParamStore};

use crate::checkpoint::{
    load_checkpoint, resolve_checkpoint, source_fingerprint, CheckpointError, LoadedCheckpoint,
    TrainState, MODEL_FILE, RECIPE_FILE,
};
use crate::{select_device, Components, PipelineError, Plan};

/// A trained model read back for evaluation or inference.
pub struct LoadedModel {
    pub plan: Plan,
    pub vlm: vlmkit_core::Vlm,
    pub dir: PathBuf,
    pub state: TrainState,
}

/// The checkpoint `path` resolves to (a run's final model, else its latest
/// checkpoint), read, and the plan of the recipe and tokenizer it was trained
/// with (`overrides` and `device` applied to that recipe).
pub fn checkpoint_plan(
    path: &Path,
    components: &Components,
    device: Option<&str>,
    overrides: &[String],
) -> Result<(PathBuf, LoadedCheckpoint, Plan), PipelineError> {
    let dir = resolve_checkpoint(path)?;
    let mut ck = load_checkpoint(&dir)?;
    let mut recipe = vlmkit_recipe::Recipe::from_resolved_str_with(
        &ck.recipe_toml,
        &dir.join(RECIPE_FILE),
        overrides,
    )?;
    if let Some(d) = device {
        recipe.run.device = d.to_string();
    }
    let tokenizer = vlmkit_data::TextTokenizer::from_json(&ck.tokenizer_json)?;
    let plan = Plan::new(recipe, components, Some(tokenizer))?;
    restore_frozen(&mut ck, &plan)?;
    Ok((dir, ck, plan))
}

/// Puts back the weights `ck` left out (pretrained parts no stage had trained
/// yet), read from their sources, after checking that each source is the one the
/// run started from.
pub fn restore_frozen(ck: &mut LoadedCheckpoint, plan: &Plan) -> Result<(), PipelineError> {
    let parts = plan.model.pretrained_parts();
    for (part, recorded) in &ck.state.frozen_sources {
        let what = if part == "llm" {
            "the language model"
        } else {
            "the vision encoder"
        };
        let refuse = |why: String| CheckpointError::FrozenSource {
            dir: ck.dir.clone(),
            what,
            source_path: recorded.path.clone(),
            why,
        };
        let Some(&(_, path)) = parts.iter().find(|(p, _)| p == part) else {
            return Err(refuse(format!("the recipe saved with it reads no `{part}.from`")).into());
        };
        if !path.exists() {
            return Err(refuse(format!("{} does not exist", path.display())).into());
        }
        if source_fingerprint(path)? != recorded.fingerprint {
            return Err(refuse(format!(
                "{} is not the copy the run read (its files' sizes or contents differ)",
                path.display()
            ))
            .into());
        }
        let store = ParamStore::new(candle_core::Device::Cpu, candle_core::DType::F32);
        plan.model
            .insert_part(&store, part)
            .map_err(|e| refuse(e.to_string()))?;
        // A tied checkpoint's copy of the embeddings is not a model weight.
        let tied_head = (part == "llm" && plan.model.llm.config.tie_word_embeddings)
            .then_some("llm.lm_head.weight");
        for (name, tensor) in store.to_cpu_tensors(|_| true)? {
            if Some(name.as_str()) != tied_head {
                ck.model.entry(name).or_insert(tensor);
            }
        }
    }
    Ok(())
}

/// Loads a checkpoint (or a run's final model): its resolved recipe and tokenizer,
/// then every weight — a weight the model expects but the file lacks, or one the
/// model does not know, is an error naming it.
/// `overrides` (`--set`) apply to the saved recipe; only evaluation settings
/// (`data.eval`, `eval`, `run.device`, `run.threads`) should change, since the
/// weights fix the model.
pub fn load_model(
    path: &Path,
    components: &Components,
    device: Option<&str>,
    overrides: &[String],
) -> Result<LoadedModel, PipelineError> {
    let (dir, ck, plan) = checkpoint_plan(path, components, device, overrides)?;
    let weights = dir.join(MODEL_FILE);
    if let Some(name) = first_non_finite(&ck.model)? {
        return Err(CheckpointError::Weights {
            path: weights,
            message: format!(
                "weight `{name}` holds NaN or infinite values: the run diverged before this checkpoint was written, and nothing it computes means anything"
            ),
        }
        .into());
    }
    let device = select_device(&plan.recipe.run.device)?;
    let store = ParamStore::new(device, candle_core::DType::F32);
    store.insert_tensors(ck.model)?;
    store.begin_build();
    let vlm = plan
        .model
        .build(&store, Missing::Error, Arc::new(|_| false), BTreeMap::new())
        .map_err(|e| CheckpointError::Weights {
            path: weights.clone(),
            message: e.to_string(),
        })?;
    let unexpected = store.unrequested();
    if !unexpected.is_empty() {
        return Err(CheckpointError::Weights {
            path: weights,
            message: format!(
                "{} weight(s) the model does not use, e.g. {}",
                unexpected.len(),
                unexpected
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
        .into());
    }
    Ok(LoadedModel {
        plan,
        vlm,
        dir,
        state: ck.state,
    })
}

/// The model a recipe starts training from: the parts `from` names read from
/// their checkpoints, the rest initialised from the recipe seed, exactly as step 0
/// of `vlmkit train` builds it. For asking a pretrained language model something
/// before any training.
pub fn untrained_model(
    mut plan: Plan,
    recipe_path: &Path,
    device: Option<&str>,
) -> Result<LoadedModel, PipelineError> {
    if let Some(d) = device {
        plan.recipe.run.device = d.to_string();
    }
    let device = select_device(&plan.recipe.run.device)?;
    let store = ParamStore::new(device, candle_core::DType::F32);
    plan.create_fresh_params(&store)?;
    store.begin_build();
    let vlm = plan
        .model
        .build(&store, Missing::Error, Arc::new(|_| false), BTreeMap::new())?;
    Ok(LoadedModel {
        state: TrainState::fresh(&plan.recipe),
        plan,
        vlm,
        dir: recipe_path.to_path_buf(),
    })
}

/// The name of the first tensor of `tensors` that holds a NaN or an infinity.
pub fn first_non_finite(
    tensors: &BTreeMap<String, candle_core::Tensor>,
) -> Result<Option<String>, PipelineError> {
    for (name, tensor) in tensors {
        let values = tensor
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        if values.iter().any(|v| !v.is_finite()) {
            return Ok(Some(name.clone()));
        }
    }
    Ok(None)
}
