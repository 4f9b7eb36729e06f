//! transformers' `LlavaForConditionalGeneration` directory layout: what vlmkit
//! writes when it exports a LLaVA-1.5-style model, and what its readers accept
//! when a recipe's `from` names such a directory.
//!
//! The weights use the layout transformers 4.36 to 4.57 write and every later
//! version reads: `vision_tower.vision_model.*`, `multi_modal_projector.linear_{1,2}.*`,
//! `language_model.model.*` and `language_model.lm_head.weight`. transformers 5
//! saves a freshly made model's tower as `vision_tower.embeddings.*`, which 4.x
//! cannot read, so that layout is not written.

use std::path::Path;

use serde_json::{json, Value};
use vlmkit_core::hub;

use super::HfError;
use crate::llama::LlamaConfig;
use crate::vit::{VitConfig, VitFamily};

/// `config.json`'s `model_type` of a LLaVA model.
pub const MODEL_TYPE: &str = "llava";

/// Whether `dir` holds a LLaVA model (its `config.json` says `model_type = "llava"`).
pub fn is_llava(dir: &Path) -> bool {
    dir.is_dir()
        && hub::read_config(dir)
            .ok()
            .and_then(|c| {
                c.get("model_type")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
            .is_some_and(|t| t == MODEL_TYPE)
}

/// The `model_type` a nested config has when it does not say, as `LlavaConfig`
/// fills it in (`vision_config` → CLIP, `text_config` → LLaMA).
pub fn nested_model_type<'a>(nested: &'a Value, key: &str) -> &'a str {
    nested
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or(match key {
            "vision_config" => "clip_vision_model",
            _ => "llama",
        })
}

/// The name a vlmkit weight has in a LLaVA checkpoint, or `None` for a weight a
/// LLaVA model has no place for.
pub fn export_name(name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix("vision.") {
        return Some(format!("vision_tower.{rest}"));
    }
    if let Some(rest) = name.strip_prefix("llm.") {
        return Some(format!("language_model.{rest}"));
    }
    let rest = name.strip_prefix("connector.proj.")?;
    let (index, param) = rest.split_once('.')?;
    let linear = match index {
        "0" => "linear_1",
        "2" => "linear_2",
        _ => return None,
    };
    Some(format!("multi_modal_projector.{linear}.{param}"))
}

/// The language model's name for a weight of a LLaVA checkpoint, or `None` for
/// the vision tower and projector.
pub fn language_weight_name(name: &str) -> Option<&str> {
    name.strip_prefix("language_model.")
}

/// `vision_config` for a CLIP or SigLIP tower.
pub fn vision_config_json(cfg: &VitConfig) -> Value {
    let mut config = json!({
        "model_type": match cfg.family {
            VitFamily::Clip => "clip_vision_model",
            VitFamily::Siglip => "siglip_vision_model",
        },
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_channels": cfg.num_channels,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "hidden_act": cfg.hidden_act,
        "layer_norm_eps": cfg.layer_norm_eps,
        "initializer_range": cfg.initializer_range,
        "initializer_factor": cfg.initializer_factor,
        "attention_dropout": 0.0,
    });
    if cfg.family == VitFamily::Siglip {
        // vlmkit keeps no pooling head: without this transformers would make one
        // and initialise it at random.
        config["vision_use_head"] = json!(false);
    }
    config
}

/// `text_config` for a LLaMA-family decoder with `vocab_size` embedding rows:
/// `qwen2` for q/k/v biases alone, `mistral` for a sliding window, else `llama`.
pub fn text_config_json(cfg: &LlamaConfig, vocab_size: usize) -> Result<Value, String> {
    let model_type =
        match (cfg.qkv_bias, cfg.attention_bias, cfg.sliding_window) {
            (true, true, _) => return Err(
                "q/k/v biases (Qwen2) together with `attention_bias` match no transformers model"
                    .into(),
            ),
            (true, false, _) => "qwen2",
            (false, _, Some(_)) if cfg.attention_bias => {
                return Err("Mistral has no attention biases".into())
            }
            (false, _, Some(_)) => "mistral",
            (false, _, None) => "llama",
        };
    let mut config = json!({
        "model_type": model_type,
        "vocab_size": vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.kv_heads(),
        "hidden_act": cfg.hidden_act,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "initializer_range": cfg.initializer_range,
        "attention_dropout": 0.0,
    });
    if let Some(head_dim) = cfg.head_dim {
        config["head_dim"] = json!(head_dim);
    }
    match model_type {
        "llama" => {
            config["attention_bias"] = json!(cfg.attention_bias);
            config["mlp_bias"] = json!(false);
        }
        "mistral" => config["sliding_window"] = json!(cfg.sliding_window),
        _ => config["use_sliding_window"] = json!(false),
    }
    Ok(config)
}

/// Everything `config.json` of a LLaVA model says beyond its two parts.
#[derive(Debug, Clone, PartialEq)]
pub struct LlavaSettings {
    /// The hidden state the projector reads (transformers' indexing).
    pub vision_feature_layer: i64,
    /// Whether the tower has a class token to drop (`"default"`) or not (`"full"`).
    pub drop_cls: bool,
    pub image_token_index: u32,
    /// Visual tokens per image.
    pub image_seq_length: usize,
    pub pad_token_id: u32,
    /// The stored dtype, as transformers names it (`float32`, `bfloat16`, `float16`).
    pub torch_dtype: &'static str,
}

/// `config.json` of a `LlavaForConditionalGeneration`.
pub fn config_json(vision: Value, text: Value, settings: &LlavaSettings) -> Value {
    let tied = text["tie_word_embeddings"].clone();
    json!({
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": MODEL_TYPE,
        "vision_config": vision,
        "text_config": text,
        "image_token_index": settings.image_token_index,
        "image_seq_length": settings.image_seq_length,
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": true,
        "vision_feature_layer": settings.vision_feature_layer,
        "vision_feature_select_strategy": if settings.drop_cls { "default" } else { "full" },
        "tie_word_embeddings": tied,
        "ignore_index": -100,
        "pad_token_id": settings.pad_token_id,
        "torch_dtype": settings.torch_dtype,
    })
}

/// `processor_config.json`: how `LlavaProcessor` expands one `<image>` into
/// `image_seq_length` tokens.
/// `has_cls`: the tower has a class token, which the projector drops.
pub fn processor_config_json(patch_size: usize, has_cls: bool, image_token: &str) -> Value {
    json!({
        "processor_class": "LlavaProcessor",
        "image_token": image_token,
        "patch_size": patch_size,
        "vision_feature_select_strategy": if has_cls { "default" } else { "full" },
        "num_additional_image_tokens": usize::from(has_cls),
    })
}

/// The nested config under `key` of a LLaVA `config.json`, for the readers.
pub(crate) fn nested<'a>(
    json: &super::ConfigJson,
    raw: &'a Value,
    key: &str,
) -> Result<&'a serde_json::Map<String, Value>, HfError> {
    raw.get(key).and_then(Value::as_object).ok_or_else(|| {
        json.err(
            key,
            "missing: a LLaVA model keeps this part's settings here",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_maps_to_the_legacy_layout() {
        for (ours, theirs) in [
            (
                "vision.vision_model.encoder.layers.0.mlp.fc1.weight",
                "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
            ),
            (
                "llm.model.layers.1.self_attn.q_proj.weight",
                "language_model.model.layers.1.self_attn.q_proj.weight",
            ),
            ("llm.lm_head.weight", "language_model.lm_head.weight"),
            (
                "connector.proj.0.weight",
                "multi_modal_projector.linear_1.weight",
            ),
            (
                "connector.proj.2.bias",
                "multi_modal_projector.linear_2.bias",
            ),
        ] {
            assert_eq!(export_name(ours).as_deref(), Some(theirs), "{ours}");
        }
        for unplaced in ["connector.proj.1.weight", "connector.gamma1", "masks.head"] {
            assert_eq!(export_name(unplaced), None, "{unplaced}");
        }
        assert_eq!(
            language_weight_name("language_model.model.norm.weight"),
            Some("model.norm.weight")
        );
        assert_eq!(
            language_weight_name("multi_modal_projector.linear_1.bias"),
            None
        );
    }

    #[test]
    fn the_decoder_family_follows_its_biases_and_window() {
        let llama = LlamaConfig::default();
        let ty = |cfg: &LlamaConfig| text_config_json(cfg, 10).map(|c| c["model_type"].clone());
        assert_eq!(ty(&llama).unwrap(), "llama");
        let qwen2 = LlamaConfig {
            qkv_bias: true,
            ..llama.clone()
        };
        assert_eq!(ty(&qwen2).unwrap(), "qwen2");
        let mistral = LlamaConfig {
            sliding_window: Some(4096),
            ..llama.clone()
        };
        assert_eq!(ty(&mistral).unwrap(), "mistral");
        let neither = LlamaConfig {
            qkv_bias: true,
            attention_bias: true,
            ..llama
        };
        assert!(ty(&neither).unwrap_err().contains("no transformers model"));
    }
}
