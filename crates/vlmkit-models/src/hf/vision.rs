//! Hugging Face vision checkpoints — CLIP (`CLIPVisionModel`, or the vision half
//! of a `CLIPModel`), SigLIP (`SiglipVisionModel` / `SiglipModel`) and ConvNeXt
//! (`ConvNextModel` / `ConvNextForImageClassification`), or whatever else a
//! [`VisionRegistry`]'s factories read — into vlmkit's encoders, exactly or not
//! at all. Each factory reads its own settings and names its own weights
//! ([`crate::vision::VisionFactory`]); this module finds the factory and the
//! settings, and checks the weights one for one.
//!
//! The weights may carry any of the prefixes transformers has written:
//! `vision_model.` (4.x, and full CLIP/SigLIP models), none (5.x vision models),
//! `vision_tower.vision_model.` (inside a LLaVA), `convnext.` (the classifier).
//! What is not the vision encoder — a CLIP text tower and projections, SigLIP's
//! pooling head, a ConvNeXt classifier, the `position_ids` buffer — is skipped by
//! name; every other weight must match the model one for one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use vlmkit_core::hub;
use vlmkit_core::ops::Activation;
use vlmkit_core::params::{Missing, ParamStore};
use vlmkit_core::VisionEncoder;

use super::{architectures, check_unexpected, ConfigJson, HfError};
use crate::vision::{VisionArch, VisionConfig, VisionFactory, VisionRegistry};

/// A vision checkpoint's architecture, as read from its `config.json` (and its
/// normalisation from `preprocessor_config.json`).
#[derive(Debug, Clone)]
pub struct VisionCheckpoint {
    pub dir: PathBuf,
    pub model_type: String,
    pub architectures: Vec<String>,
    /// The family it reads as: `clip`, `siglip`, `convnext`.
    pub kind: &'static str,
    /// The factory that read it.
    pub factory: Arc<dyn VisionFactory>,
    pub config: VisionConfig,
}

/// Config keys that change nothing the encoder computes.
pub(crate) const IGNORED: &[&str] = &[
    "_name_or_path",
    "architectures",
    "dtype",
    "model_type",
    "torch_dtype",
    "transformers_version",
    // CLIP's joint embedding width: the projections are not loaded.
    "projection_dim",
    // SigLIP's pooling head: not loaded.
    "vision_use_head",
    // ConvNeXt's backbone and classifier bookkeeping.
    "out_features",
    "out_indices",
    "stage_names",
    "id2label",
    "label2id",
    "num_labels",
    "problem_type",
];

/// Whether a `config.json`'s `model_type` is a vision encoder vlmkit's built-in
/// encoders read.
pub fn is_vision_model_type(model_type: &str) -> bool {
    VisionRegistry::builtin()
        .for_model_type(model_type, false)
        .is_some()
}

/// Reads `dir/config.json` as one of the built-in vision encoders.
pub fn read_vision_config(dir: &Path) -> Result<VisionCheckpoint, HfError> {
    read_vision_config_with(dir, &VisionRegistry::builtin())
}

/// Reads `dir/config.json` as a vision encoder `registry` knows.
pub fn read_vision_config_with(
    dir: &Path,
    registry: &VisionRegistry,
) -> Result<VisionCheckpoint, HfError> {
    let json = ConfigJson::new(dir);
    let raw = hub::read_config(dir)?;
    let model_type = raw
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or_else(|| json.err("model_type", "missing"))?
        .to_string();
    // A LLaVA model's tower: its own type, under `vision_config`.
    let llava = model_type == super::llava::MODEL_TYPE;
    let tower_type = if llava {
        // A missing `vision_config` is refused below, where it is read.
        super::llava::nested_model_type(&raw["vision_config"], "vision_config")
    } else {
        model_type.as_str()
    };
    let (factory, read) = registry.for_model_type(tower_type, llava).ok_or_else(|| {
        json.err(
            if llava {
                "vision_config.model_type"
            } else {
                "model_type"
            },
            format!(
                "`{tower_type}` is not a vision encoder vlmkit reads (it reads {})",
                registry
                    .model_types()
                    .iter()
                    .map(|t| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    let architectures = architectures(&raw);
    let (json, settings) = if read.nested || llava {
        let json = json.nested("vision_config");
        let settings = raw
            .get("vision_config")
            .ok_or_else(|| json.err("", "missing: a full model keeps its vision settings here"))?;
        (json, settings)
    } else {
        (json, &raw)
    };
    let settings = settings
        .as_object()
        .ok_or_else(|| json.err("", "not a JSON object"))?;
    let mut config = factory.read_hf_config(tower_type, &json, settings)?;
    read_normalisation(dir, &mut *config)?;
    Ok(VisionCheckpoint {
        dir: dir.to_path_buf(),
        model_type,
        architectures,
        kind: config.family(),
        factory: factory.clone(),
        config,
    })
}

pub(crate) fn activation(json: &ConfigJson, key: &str, v: &Value) -> Result<Activation, HfError> {
    serde_json::from_value(v.clone()).map_err(|_| {
        json.err(
            key,
            format!("{v}: not an activation vlmkit implements (quick_gelu, gelu, gelu_pytorch_tanh, silu, relu)"),
        )
    })
}

/// `image_mean` / `image_std` from `preprocessor_config.json`, when the directory
/// has one (transformers keeps the normalisation there, not in config.json).
fn read_normalisation(dir: &Path, config: &mut dyn VisionArch) -> Result<(), HfError> {
    let path = dir.join("preprocessor_config.json");
    if !path.exists() {
        return Ok(());
    }
    let raw = hub::read_text(&path)?;
    let value: Value = serde_json::from_str(&raw).map_err(|e| HfError::Config {
        path: path.clone(),
        key: String::new(),
        message: format!("not JSON: {e}"),
    })?;
    let triple = |key: &str| -> Result<Option<[f32; 3]>, HfError> {
        let Some(v) = value.get(key) else {
            return Ok(None);
        };
        let numbers: Option<Vec<f32>> = v.as_array().map(|a| {
            a.iter()
                .filter_map(|n| n.as_f64().map(|n| n as f32))
                .collect()
        });
        match numbers {
            Some(n) if n.len() == 3 => Ok(Some([n[0], n[1], n[2]])),
            _ => Err(HfError::Config {
                path: path.clone(),
                key: key.to_string(),
                message: format!("expected three numbers (one per channel), got {v}"),
            }),
        }
    };
    let info = config.info();
    let mean = triple("image_mean")?.unwrap_or(info.image_mean);
    let std = triple("image_std")?.unwrap_or(info.image_std);
    crate::vision::check_normalisation(mean, std).map_err(|(key, message)| HfError::Config {
        path: path.clone(),
        key: key.to_string(),
        message,
    })?;
    config.set_normalisation(mean, std);
    Ok(())
}

/// `factory`'s name for checkpoint weight `name`; an index buffer some
/// checkpoints save (`position_ids`) is never a weight.
fn weight_name(factory: &dyn VisionFactory, name: &str) -> Option<String> {
    if name.ends_with("position_ids") {
        return None;
    }
    factory.hf_weight_name(name)
}

/// Puts the vision weights of `dir` into `store` under `prefix`, renamed to
/// `factory`'s names.
pub fn insert_vision_weights(
    dir: &Path,
    store: &ParamStore,
    prefix: &str,
    factory: &dyn VisionFactory,
) -> Result<(), HfError> {
    let weights = hub::read_weights(dir)?
        .into_iter()
        .filter_map(|(name, tensor)| {
            weight_name(factory, &name).map(|n| (format!("{prefix}{n}"), tensor))
        });
    store.insert_tensors(weights)?;
    Ok(())
}

/// The vision encoder in `dir`, its weights frozen, on `device`.
pub fn load_vision_model(
    dir: &Path,
    device: &Device,
) -> Result<(VisionCheckpoint, Box<dyn VisionEncoder>), HfError> {
    let checkpoint = read_vision_config(dir)?;
    let store = ParamStore::new(device.clone(), DType::F32);
    insert_vision_weights(dir, &store, "", checkpoint.factory.as_ref())?;
    store.begin_build();
    let vb = store.builder(Missing::Error, Arc::new(|_| false));
    let model = checkpoint.config.build(vb).map_err(|e| HfError::Weights {
        dir: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    check_unexpected(dir, &store, "", false)?;
    Ok((checkpoint, model))
}

/// Every hidden state of `encoder` (of architecture `arch`) on `pixels`
/// (`B×C×H×W`), laid out as transformers' `output_hidden_states`: `B×(1+N)×D`
/// with the class token first (CLIP), `B×N×D` (SigLIP), `B×C×H×W` (ConvNeXt,
/// `channels_first`).
pub fn vision_hidden_states(
    encoder: &dyn VisionEncoder,
    arch: &dyn VisionArch,
    pixels: &Tensor,
) -> Result<Vec<Tensor>, HfError> {
    let info = encoder.info().clone();
    let all: Vec<usize> = (0..=info.depth).collect();
    let features = encoder.forward(pixels, &all)?;
    let mut states = Vec::with_capacity(all.len());
    for (i, layer) in features.layers.iter().enumerate() {
        let cls = features.cls.as_ref().map(|cls| &cls[i]);
        states.push(arch.hf_hidden_state(layer, cls, info.grids[i])?);
    }
    Ok(states)
}

#[cfg(test)]
mod tests {
    use super::weight_name;
    use crate::vision::VisionRegistry;

    /// The name the built-in encoder of family `kind` gives checkpoint weight `name`.
    fn name(kind: &str, name: &str) -> Option<String> {
        weight_name(VisionRegistry::builtin().get(kind)?.as_ref(), name)
    }

    #[test]
    fn every_layout_transformers_writes_maps_to_one_name() {
        let want = Some("vision_model.encoder.layers.0.mlp.fc1.weight".to_string());
        for layout in [
            "vision_model.encoder.layers.0.mlp.fc1.weight",
            "encoder.layers.0.mlp.fc1.weight",
            "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
        ] {
            assert_eq!(name("clip", layout), want, "{layout}");
        }
        for skipped in [
            "text_model.encoder.layers.0.mlp.fc1.weight",
            "visual_projection.weight",
            "logit_scale",
            "vision_model.embeddings.position_ids",
            "vision_model.head.probe",
            "head.attention.in_proj_weight",
        ] {
            assert_eq!(name("siglip", skipped), None, "{skipped}");
        }
        assert_eq!(
            name("convnext", "convnext.embeddings.patch_embeddings.weight").as_deref(),
            Some("embeddings.patch_embeddings.weight")
        );
        assert_eq!(name("convnext", "classifier.weight"), None);
    }
}
