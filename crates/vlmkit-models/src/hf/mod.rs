//! Hugging Face checkpoints read into vlmkit's models, exactly or not at all:
//! language models (LLaMA, Vicuna, SmolLM, Mistral, Qwen2) into [`Llama`] here,
//! vision encoders (CLIP, SigLIP, ConvNeXt) in [`vision`].
//!
//! `config.json` is read per `model_type`: the keys that set the architecture are
//! mapped onto [`LlamaConfig`]; keys that change nothing vlmkit computes are listed
//! and ignored; a key whose value would change the maths in a way vlmkit does not
//! implement (a rope scaling, MLP biases, a sliding window, dropout) is refused
//! with its name, and so is any key this reader does not know. The weights must
//! match the model one for one: a missing weight, an unexpected one or a shape
//! mismatch is an error that names it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use vlmkit_core::hub::{self, HubError};
use vlmkit_core::params::{Missing, ParamStore};
use vlmkit_core::{DecoderHooks, DecoderInput, LanguageModel};

use crate::llama::{Llama, LlamaConfig};

pub mod llava;
pub mod vision;

/// Why a checkpoint could not be read exactly.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("{}: `{key}`: {message}", path.display())]
    Config {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{}: {message}", dir.display())]
    Weights { dir: PathBuf, message: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// A language-model checkpoint's architecture, as read from its `config.json`.
#[derive(Debug, Clone)]
pub struct LanguageCheckpoint {
    /// The directory, or the GGUF file.
    pub path: PathBuf,
    pub model_type: String,
    pub architectures: Vec<String>,
    pub config: LlamaConfig,
}

/// Keys that change nothing vlmkit computes (generation defaults, bookkeeping,
/// inference-time tensor-parallel slicing).
const IGNORED: &[&str] = &[
    "_name_or_path",
    "architectures",
    "bos_token_id",
    "dtype",
    "eos_token_id",
    "is_llama_config",
    "max_window_layers",
    "model_type",
    "pad_token_id",
    "pretraining_tp",
    "tokenizer_class",
    "torch_dtype",
    "transformers_version",
    "use_cache",
];

/// The model types read into [`Llama`], and whether their q/k/v projections carry
/// biases (Qwen2 has them without a config key saying so).
const LANGUAGE_MODEL_TYPES: &[(&str, bool)] =
    &[("llama", false), ("mistral", false), ("qwen2", true)];

/// Reads `dir/config.json` as a LLaMA-family language model, or the metadata of
/// a GGUF file.
pub fn read_language_config(dir: &Path) -> Result<LanguageCheckpoint, HfError> {
    if crate::gguf::is_model_file(dir) {
        return crate::gguf::GgufFile::open(dir)?.language_checkpoint();
    }
    let top = ConfigJson::new(dir);
    let raw = hub::read_config(dir)?;
    let top_type = raw
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or_else(|| top.err("model_type", "missing"))?;
    // A LLaVA model keeps its language model's settings under `text_config`.
    let (json, obj, model_type) = if top_type == llava::MODEL_TYPE {
        let obj = llava::nested(&top, &raw, "text_config")?;
        let model_type = llava::nested_model_type(&raw["text_config"], "text_config");
        (top.nested("text_config"), obj, model_type.to_string())
    } else {
        let obj = raw
            .as_object()
            .ok_or_else(|| top.err("", "not a JSON object"))?;
        (top, obj, top_type.to_string())
    };
    let err = |key: &str, message: String| json.err(key, message);
    let qkv_bias = LANGUAGE_MODEL_TYPES
        .iter()
        .find(|(t, _)| *t == model_type)
        .map(|(_, bias)| *bias)
        .ok_or_else(|| {
            err(
                "model_type",
                format!(
                    "`{model_type}` is not a language model vlmkit reads (it reads {})",
                    LANGUAGE_MODEL_TYPES
                        .iter()
                        .map(|(t, _)| format!("`{t}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
    let architectures = architectures(&raw);

    let mut cfg = LlamaConfig {
        qkv_bias,
        ..LlamaConfig::default()
    };
    let mut sliding = None;
    let mut use_sliding = None;
    json.read_keys(obj, IGNORED, |k, v| {
        match k {
            "vocab_size" => cfg.vocab_size = json.usize(k, v)?,
            "hidden_size" => cfg.hidden_size = json.usize(k, v)?,
            "intermediate_size" => cfg.intermediate_size = json.usize(k, v)?,
            "num_hidden_layers" => cfg.num_hidden_layers = json.usize(k, v)?,
            "num_attention_heads" => cfg.num_attention_heads = json.usize(k, v)?,
            "num_key_value_heads" if !v.is_null() => {
                cfg.num_key_value_heads = Some(json.usize(k, v)?)
            }
            "head_dim" if !v.is_null() => cfg.head_dim = Some(json.usize(k, v)?),
            "max_position_embeddings" => cfg.max_position_embeddings = json.usize(k, v)?,
            "rms_norm_eps" => cfg.rms_norm_eps = json.f64(k, v)?,
            "rope_theta" => cfg.rope_theta = json.f64(k, v)?,
            "tie_word_embeddings" => cfg.tie_word_embeddings = json.bool(k, v)?,
            "attention_bias" => cfg.attention_bias = json.bool(k, v)?,
            "initializer_range" => cfg.initializer_range = json.f64(k, v)?,
            "hidden_act" => {
                if v.as_str() != Some("silu") {
                    return Err(err(k, format!("{v}: LLaMA-family decoders use `silu`")));
                }
            }
            "rope_scaling" if v.is_null() => {}
            "rope_scaling" => return Err(err(k, unsupported_rope(v))),
            // transformers 5 writes the rope settings as one table.
            "rope_parameters" => {
                let kind = v
                    .get("rope_type")
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                if kind != "default" {
                    return Err(err(k, unsupported_rope(v)));
                }
                if let Some(theta) = v.get("rope_theta") {
                    cfg.rope_theta = json.f64("rope_parameters.rope_theta", theta)?;
                }
            }
            "mlp_bias" if v.as_bool() == Some(false) => {}
            "mlp_bias" => return Err(err(k, "MLP biases are not implemented".into())),
            "rope_interleaved" if v.as_bool() == Some(false) => {}
            "rope_interleaved" => {
                return Err(err(
                    k,
                    "interleaved rotary embeddings are not implemented (vlmkit rotates halves)"
                        .into(),
                ))
            }
            "attention_dropout" => json.zero(k, v)?,
            "sliding_window" if !v.is_null() => sliding = Some(json.usize(k, v)?),
            "sliding_window" => {}
            "use_sliding_window" => use_sliding = Some(json.bool(k, v)?),
            "layer_types" => {
                let all_full = v
                    .as_array()
                    .is_some_and(|a| a.iter().all(|t| t.as_str() == Some("full_attention")));
                if !all_full {
                    return Err(err(
                        k,
                        "only `full_attention` layers are implemented".into(),
                    ));
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    // Qwen2 writes a window but turns it off; Mistral turns it on by setting one.
    cfg.sliding_window = match (model_type.as_str(), use_sliding) {
        ("qwen2", Some(false) | None) => None,
        _ => sliding,
    };
    if let Err((key, message)) = cfg.validate() {
        return Err(err(key, message));
    }
    Ok(LanguageCheckpoint {
        path: dir.to_path_buf(),
        model_type,
        architectures,
        config: cfg,
    })
}

/// A config's `architectures` (the transformers classes that saved it).
pub(crate) fn architectures(config: &Value) -> Vec<String> {
    config
        .get("architectures")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Typed reads of one `config.json`, every error naming the file and the key.
pub struct ConfigJson {
    path: PathBuf,
    /// Prepended to key names in messages (`vision_config.` for a nested config).
    key_prefix: String,
}

impl ConfigJson {
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join("config.json"),
            key_prefix: String::new(),
        }
    }

    /// The same file, reading the table under `key`.
    pub fn nested(&self, key: &str) -> Self {
        Self {
            path: self.path.clone(),
            key_prefix: format!("{}{key}.", self.key_prefix),
        }
    }

    pub fn err(&self, key: &str, message: impl Into<String>) -> HfError {
        HfError::Config {
            path: self.path.clone(),
            key: format!("{}{key}", self.key_prefix),
            message: message.into(),
        }
    }

    pub fn usize(&self, key: &str, v: &Value) -> Result<usize, HfError> {
        v.as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| self.err(key, format!("expected a whole number, got {v}")))
    }

    pub fn f64(&self, key: &str, v: &Value) -> Result<f64, HfError> {
        v.as_f64()
            .ok_or_else(|| self.err(key, format!("expected a number, got {v}")))
    }

    pub fn bool(&self, key: &str, v: &Value) -> Result<bool, HfError> {
        v.as_bool()
            .ok_or_else(|| self.err(key, format!("expected true or false, got {v}")))
    }

    /// A setting vlmkit does not train with (dropout) must be zero.
    pub fn zero(&self, key: &str, v: &Value) -> Result<(), HfError> {
        if v.as_f64() == Some(0.0) {
            Ok(())
        } else {
            Err(self.err(
                key,
                format!("{v}: vlmkit trains without dropout; set it to 0.0"),
            ))
        }
    }

    /// Hands every key of `settings` to `set`; a key `set` does not take (it
    /// returns `false`) and `ignored` does not list is refused by name.
    pub fn read_keys(
        &self,
        settings: &serde_json::Map<String, Value>,
        ignored: &[&str],
        mut set: impl FnMut(&str, &Value) -> Result<bool, HfError>,
    ) -> Result<(), HfError> {
        let mut unknown = Vec::new();
        for (key, v) in settings {
            if !set(key, v)? && !ignored.contains(&key.as_str()) {
                unknown.push(key.clone());
            }
        }
        let Some(first) = unknown.first() else {
            return Ok(());
        };
        Err(self.err(
            first,
            format!(
                "unknown key{} {}: vlmkit refuses what it cannot tell is harmless",
                if unknown.len() > 1 { "s" } else { "" },
                unknown
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }
}

fn unsupported_rope(v: &Value) -> String {
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    format!("rope scaling `{kind}` is not implemented (only the default rotary embedding is)")
}

/// Checkpoint names that carry nothing the model computes from.
fn ignorable(name: &str) -> bool {
    name.ends_with(".rotary_emb.inv_freq")
}

/// Puts the weights of `dir` (or of a GGUF file) into `store` under `prefix`
/// (e.g. `"llm."`).
pub fn insert_weights(dir: &Path, store: &ParamStore, prefix: &str) -> Result<(), HfError> {
    if crate::gguf::is_model_file(dir) {
        return crate::gguf::insert_gguf_weights(dir, store, prefix);
    }
    let llava = llava::is_llava(dir);
    let weights = hub::read_weights(dir)?
        .into_iter()
        .filter(|(name, _)| !ignorable(name))
        .filter_map(|(name, tensor)| {
            let name = if llava {
                llava::language_weight_name(&name)?
            } else {
                &name
            };
            Some((format!("{prefix}{name}"), tensor))
        });
    store.insert_tensors(weights)?;
    Ok(())
}

/// Weights the built model did not ask for, as an error naming them, except a
/// tied checkpoint's copy of the embeddings as `lm_head.weight`.
pub fn check_unexpected(
    dir: &Path,
    store: &ParamStore,
    prefix: &str,
    tied: bool,
) -> Result<(), HfError> {
    let mut unexpected = store.unrequested();
    unexpected.retain(|name| name.starts_with(prefix));
    if tied {
        let head = format!("{prefix}lm_head.weight");
        if let Some(pos) = unexpected.iter().position(|n| *n == head) {
            if !head_copies_embeddings(store, prefix)? {
                return Err(HfError::Weights {
                    dir: dir.to_path_buf(),
                    message: "`lm_head.weight` differs from `model.embed_tokens.weight`, but config.json says `tie_word_embeddings`".into(),
                });
            }
            unexpected.remove(pos);
        }
    }
    if unexpected.is_empty() {
        return Ok(());
    }
    Err(HfError::Weights {
        dir: dir.to_path_buf(),
        message: format!(
            "{} weight{} the model does not have: {}",
            unexpected.len(),
            if unexpected.len() == 1 { "" } else { "s" },
            name_list(&unexpected, prefix)
        ),
    })
}

/// Up to five weight names, quoted, without `prefix`, "…" for the rest.
pub fn name_list(names: &[String], prefix: &str) -> String {
    let shown: Vec<String> = names
        .iter()
        .take(5)
        .map(|n| format!("`{}`", n.strip_prefix(prefix).unwrap_or(n)))
        .collect();
    format!(
        "{}{}",
        shown.join(", "),
        if names.len() > 5 { ", …" } else { "" }
    )
}

/// Whether the `lm_head.weight` stored under `prefix` equals the embeddings, as a
/// tied checkpoint that saves both holds them.
pub fn head_copies_embeddings(store: &ParamStore, prefix: &str) -> Result<bool, HfError> {
    let head = store.get(&format!("{prefix}lm_head.weight"));
    let embed = store.get(&format!("{prefix}model.embed_tokens.weight"));
    Ok(match (embed, head) {
        (Some(e), Some(h)) => {
            e.shape() == h.shape()
                && vlmkit_core::gradcheck::max_abs_diff(e.as_tensor(), h.as_tensor())? == 0.0
        }
        _ => false,
    })
}

/// The language model in `dir` (or a GGUF file), its weights frozen, on `device`.
pub fn load_language_model(
    dir: &Path,
    device: &Device,
) -> Result<(LanguageCheckpoint, Llama), HfError> {
    let checkpoint = read_language_config(dir)?;
    let store = ParamStore::new(device.clone(), DType::F32);
    insert_weights(dir, &store, "")?;
    store.begin_build();
    let vb = store.builder(Missing::Error, Arc::new(|_| false));
    let model = Llama::new(&checkpoint.config, vb).map_err(|e| HfError::Weights {
        dir: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    check_unexpected(dir, &store, "", checkpoint.config.tie_word_embeddings)?;
    Ok((checkpoint, model))
}

/// Records the hidden states entering each decoder layer.
#[derive(Default)]
struct Recorder(Mutex<Vec<Tensor>>);

impl DecoderHooks for Recorder {
    fn before_layer(&self, _layer: usize, hidden: &Tensor) -> candle_core::Result<Tensor> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(hidden.clone());
        Ok(hidden.clone())
    }
}

/// What [`hidden_states`] returns.
pub struct LanguageModelOutputs {
    /// `hidden_states.{i}` in transformers' indexing: the embeddings, the input of
    /// every later layer, and the final norm's output last.
    pub hidden_states: Vec<Tensor>,
    pub logits: Tensor,
}

/// Runs `model` on `input_ids` (`B×T`) as transformers' `forward` does: positions
/// `0..T` in every row, causal attention, and keys where `attention_mask` is 0
/// blocked (padding queries attend to nothing, so their states are not meaningful,
/// as in transformers).
pub fn hidden_states(
    model: &dyn LanguageModel,
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
) -> Result<LanguageModelOutputs, HfError> {
    let (b, t) = input_ids.dims2()?;
    let device = input_ids.device();
    let ids = input_ids.to_dtype(DType::U32)?;
    let valid: Vec<Vec<bool>> = match attention_mask {
        Some(mask) => {
            if mask.dims() != [b, t] {
                return Err(candle_core::Error::Msg(format!(
                    "attention_mask of shape {:?} does not fit input_ids of shape {:?}",
                    mask.dims(),
                    input_ids.dims()
                ))
                .into());
            }
            mask.to_dtype(DType::F32)?
                .to_vec2::<f32>()?
                .into_iter()
                .map(|row| row.into_iter().map(|m| m != 0.0).collect())
                .collect()
        }
        None => vec![vec![true; t]; b],
    };
    let positions = Tensor::arange(0u32, t as u32, device)?
        .unsqueeze(0)?
        .repeat((b, 1))?;
    let input = DecoderInput {
        positions,
        mask: vlmkit_core::ops::causal_mask(&valid, 0, t, device)?,
    };
    let recorder = Recorder::default();
    let embeds = model.embed_tokens(&ids)?;
    let last = model.forward(&embeds, &input, None, Some(&recorder))?;
    let logits = model.logits(&last)?;
    let mut hidden_states = recorder.0.into_inner().unwrap_or_else(|e| e.into_inner());
    hidden_states.push(last);
    Ok(LanguageModelOutputs {
        hidden_states,
        logits,
    })
}
