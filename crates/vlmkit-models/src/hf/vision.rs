//! Hugging Face vision checkpoints — CLIP (`CLIPVisionModel`, or the vision half
//! of a `CLIPModel`), SigLIP (`SiglipVisionModel` / `SiglipModel`) and ConvNeXt
//! (`ConvNextModel` / `ConvNextForImageClassification`) — read into vlmkit's
//! [`VisionTransformer`] and [`ConvNext`], exactly or not at all.
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
use crate::convnext::{ConvNext, ConvNextConfig};
use crate::vit::{VisionTransformer, VitConfig, VitFamily};
use crate::VisionConfig;

/// A vision checkpoint's architecture, as read from its `config.json` (and its
/// normalisation from `preprocessor_config.json`).
#[derive(Debug, Clone)]
pub struct VisionCheckpoint {
    pub dir: PathBuf,
    pub model_type: String,
    pub architectures: Vec<String>,
    /// The recipe `kind` it reads as: `clip`, `siglip` or `convnext`.
    pub kind: &'static str,
    pub config: VisionConfig,
}

/// Config keys that change nothing the encoder computes.
const IGNORED: &[&str] = &[
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

/// The model types read, and the recipe kind each becomes; `nested` when the
/// vision settings sit under `vision_config`.
const VISION_MODEL_TYPES: &[(&str, &str, bool)] = &[
    ("clip_vision_model", "clip", false),
    ("clip", "clip", true),
    ("siglip_vision_model", "siglip", false),
    ("siglip", "siglip", true),
    ("convnext", "convnext", false),
];

/// Whether a `config.json`'s `model_type` is a vision encoder vlmkit reads.
pub fn is_vision_model_type(model_type: &str) -> bool {
    VISION_MODEL_TYPES.iter().any(|(t, _, _)| *t == model_type)
}

/// Reads `dir/config.json` as a vision encoder.
pub fn read_vision_config(dir: &Path) -> Result<VisionCheckpoint, HfError> {
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
    let &(_, kind, nested) = VISION_MODEL_TYPES
        .iter()
        .find(|(t, kind, nested)| *t == tower_type && !(llava && (*nested || *kind == "convnext")))
        .ok_or_else(|| {
            json.err(
                if llava {
                    "vision_config.model_type"
                } else {
                    "model_type"
                },
                format!(
                    "`{tower_type}` is not a vision encoder vlmkit reads (it reads {})",
                    VISION_MODEL_TYPES
                        .iter()
                        .map(|(t, _, _)| format!("`{t}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
    let architectures = architectures(&raw);
    let (json, settings) = if nested || llava {
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
    let mut config = match kind {
        "convnext" => VisionConfig::ConvNext(read_convnext(&json, settings)?),
        _ => VisionConfig::Vit(read_vit(&json, settings, kind)?),
    };
    read_normalisation(dir, &mut config)?;
    Ok(VisionCheckpoint {
        dir: dir.to_path_buf(),
        model_type,
        architectures,
        kind,
        config,
    })
}

fn activation(json: &ConfigJson, key: &str, v: &Value) -> Result<Activation, HfError> {
    serde_json::from_value(v.clone()).map_err(|_| {
        json.err(
            key,
            format!("{v}: not an activation vlmkit implements (quick_gelu, gelu, gelu_pytorch_tanh, silu, relu)"),
        )
    })
}

fn read_vit(
    json: &ConfigJson,
    settings: &serde_json::Map<String, Value>,
    kind: &str,
) -> Result<VitConfig, HfError> {
    let mut cfg = match kind {
        "siglip" => VitConfig::siglip(),
        _ => VitConfig {
            family: VitFamily::Clip,
            ..VitConfig::default()
        },
    };
    json.read_keys(settings, IGNORED, |k, v| {
        match k {
            "hidden_size" => cfg.hidden_size = json.usize(k, v)?,
            "intermediate_size" => cfg.intermediate_size = json.usize(k, v)?,
            "num_hidden_layers" => cfg.num_hidden_layers = json.usize(k, v)?,
            "num_attention_heads" => cfg.num_attention_heads = json.usize(k, v)?,
            "num_channels" => cfg.num_channels = json.usize(k, v)?,
            "image_size" => cfg.image_size = json.usize(k, v)?,
            "patch_size" => cfg.patch_size = json.usize(k, v)?,
            "hidden_act" => cfg.hidden_act = activation(json, k, v)?,
            "layer_norm_eps" => cfg.layer_norm_eps = json.f64(k, v)?,
            "initializer_range" => cfg.initializer_range = json.f64(k, v)?,
            "initializer_factor" => cfg.initializer_factor = json.f64(k, v)?,
            "attention_dropout" | "dropout" => json.zero(k, v)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    cfg.validate()
        .map_err(|(key, message)| json.err(key, message))?;
    Ok(cfg)
}

fn read_convnext(
    json: &ConfigJson,
    settings: &serde_json::Map<String, Value>,
) -> Result<ConvNextConfig, HfError> {
    let mut cfg = ConvNextConfig::default();
    let list = |k: &str, v: &Value| -> Result<Vec<usize>, HfError> {
        v.as_array()
            .ok_or_else(|| json.err(k, format!("expected a list of whole numbers, got {v}")))?
            .iter()
            .map(|n| json.usize(k, n))
            .collect()
    };
    json.read_keys(settings, IGNORED, |k, v| {
        match k {
            "num_channels" => cfg.num_channels = json.usize(k, v)?,
            "patch_size" => cfg.patch_size = json.usize(k, v)?,
            "num_stages" => cfg.num_stages = json.usize(k, v)?,
            "hidden_sizes" => cfg.hidden_sizes = list(k, v)?,
            "depths" => cfg.depths = list(k, v)?,
            "hidden_act" => cfg.hidden_act = activation(json, k, v)?,
            "initializer_range" => cfg.initializer_range = json.f64(k, v)?,
            "layer_norm_eps" => cfg.layer_norm_eps = json.f64(k, v)?,
            "layer_scale_init_value" => cfg.layer_scale_init_value = json.f64(k, v)?,
            "drop_path_rate" => cfg.drop_path_rate = json.f64(k, v)?,
            "image_size" => cfg.image_size = json.usize(k, v)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    cfg.validate()
        .map_err(|(key, message)| json.err(key, message))?;
    Ok(cfg)
}

/// `image_mean` / `image_std` from `preprocessor_config.json`, when the directory
/// has one (transformers keeps the normalisation there, not in config.json).
fn read_normalisation(dir: &Path, config: &mut VisionConfig) -> Result<(), HfError> {
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
    let (mean, std) = (triple("image_mean")?, triple("image_std")?);
    let (image_mean, image_std) = match config {
        VisionConfig::Vit(cfg) => (&mut cfg.image_mean, &mut cfg.image_std),
        VisionConfig::ConvNext(cfg) => (&mut cfg.image_mean, &mut cfg.image_std),
    };
    if let Some(mean) = mean {
        *image_mean = mean;
    }
    if let Some(std) = std {
        *image_std = std;
    }
    Ok(())
}

/// The name a checkpoint weight has in vlmkit's encoder of `kind`, or `None` for
/// a weight that is not part of the encoder.
pub fn vision_weight_name(kind: &str, name: &str) -> Option<String> {
    if name.ends_with("position_ids") {
        return None; // an index buffer some checkpoints save
    }
    if kind == "convnext" {
        if name.starts_with("classifier.") {
            return None;
        }
        return Some(name.strip_prefix("convnext.").unwrap_or(name).to_string());
    }
    const NOT_VISION: &[&str] = &[
        "text_model.",
        "visual_projection.",
        "text_projection.",
        "logit_scale",
        "logit_bias",
        // A LLaVA model's other parts.
        "language_model.",
        "multi_modal_projector.",
    ];
    if NOT_VISION.iter().any(|p| name.starts_with(p)) {
        return None;
    }
    let name = name.strip_prefix("vision_tower.").unwrap_or(name);
    let name = if name.starts_with("vision_model.") {
        name.to_string()
    } else {
        format!("vision_model.{name}")
    };
    // SigLIP's attention-pooling head makes the pooled output, which no
    // connector reads.
    (!name.starts_with("vision_model.head.")).then_some(name)
}

/// Puts the vision weights of `dir` into `store` under `prefix`, renamed to
/// vlmkit's names (see [`vision_weight_name`]).
pub fn insert_vision_weights(
    dir: &Path,
    store: &ParamStore,
    prefix: &str,
    kind: &str,
) -> Result<(), HfError> {
    let weights = hub::read_weights(dir)?
        .into_iter()
        .filter_map(|(name, tensor)| {
            vision_weight_name(kind, &name).map(|n| (format!("{prefix}{n}"), tensor))
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
    insert_vision_weights(dir, &store, "", checkpoint.kind)?;
    store.begin_build();
    let vb = store.builder(Missing::Error, Arc::new(|_| false));
    let built: candle_core::Result<Box<dyn VisionEncoder>> = match &checkpoint.config {
        VisionConfig::Vit(cfg) => VisionTransformer::new(cfg, vb).map(|m| Box::new(m) as _),
        VisionConfig::ConvNext(cfg) => ConvNext::new(cfg, vb).map(|m| Box::new(m) as _),
    };
    let model = built.map_err(|e| HfError::Weights {
        dir: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    check_unexpected(dir, &store, "", false)?;
    Ok((checkpoint, model))
}

/// Every hidden state of `encoder` on `pixels` (`B×C×H×W`), laid out as
/// transformers' `output_hidden_states`: `B×(1+N)×D` with the class token first
/// (CLIP), `B×N×D` (SigLIP), `B×C×H×W` (ConvNeXt, `channels_first`).
pub fn vision_hidden_states(
    encoder: &dyn VisionEncoder,
    kind: &str,
    pixels: &Tensor,
) -> Result<Vec<Tensor>, HfError> {
    let info = encoder.info().clone();
    let all: Vec<usize> = (0..=info.depth).collect();
    let features = encoder.forward(pixels, &all)?;
    let mut states = Vec::with_capacity(all.len());
    for (i, layer) in features.layers.iter().enumerate() {
        let state = match (&features.cls, kind) {
            (Some(cls), _) => Tensor::cat(&[&cls[i].unsqueeze(1)?, layer], 1)?,
            (None, "convnext") => {
                let (b, _, c) = layer.dims3()?;
                let (h, w) = info.grids[i];
                layer
                    .reshape((b, h, w, c))?
                    .permute((0, 3, 1, 2))?
                    .contiguous()?
            }
            (None, _) => layer.clone(),
        };
        states.push(state);
    }
    Ok(states)
}

#[cfg(test)]
mod tests {
    use super::vision_weight_name as name;

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
