//! Frozen sentence encoders: a query's text in, one vector per query out.
//!
//! IGVA's published method turns the instruction into a sentence vector with a
//! frozen sentence-transformers model; [`SentenceEncoder`] reads any BERT-style
//! encoder from a local Hugging Face directory (`config.json`,
//! `model.safetensors` or a sharded index, `tokenizer.json`) and pools its last
//! hidden state the way the directory's sentence-transformers files say
//! (`modules.json`, `1_Pooling/config.json`), or as a recipe asks.
//!
//! The encoder is inference only: its weights are plain tensors, not trainable
//! variables, so nothing flows back into it and checkpoints do not hold it.

pub mod fixture;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use vlmkit_core::hub::HubError;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use serde::{Deserialize, Serialize};
use tokenizers::{Tokenizer, TruncationParams};

/// How token states become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The mean over the query's tokens (padding excluded), as sentence-transformers' `mean` mode.
    Mean,
    /// The `[CLS]` token's state.
    Cls,
}

/// Why a sentence encoder could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum TextEncoderError {
    /// A file of the directory is missing or unreadable, or says something the
    /// encoder cannot run.
    #[error(transparent)]
    File(#[from] HubError),
    #[error("sentence encoder {}: {message}", dir.display())]
    Model { dir: PathBuf, message: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

type Result<T> = std::result::Result<T, TextEncoderError>;

/// A frozen BERT-architecture sentence encoder.
pub struct SentenceEncoder {
    dir: PathBuf,
    model: BertModel,
    tokenizer: Tokenizer,
    config: BertConfig,
    pooling: Pooling,
    normalize: bool,
}

impl std::fmt::Debug for SentenceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEncoder")
            .field("dir", &self.dir)
            .field("hidden_size", &self.config.hidden_size)
            .field("pooling", &self.pooling)
            .field("normalize", &self.normalize)
            .finish()
    }
}

/// Encoders already loaded in this process, so that every model copy a trainer
/// builds (one per worker) shares one set of weights.
type Cache = Mutex<BTreeMap<(PathBuf, Option<Pooling>), Weak<SentenceEncoder>>>;
static LOADED: Cache = Mutex::new(BTreeMap::new());

impl SentenceEncoder {
    /// Loads the encoder in `dir` on the CPU. `pooling` overrides what the
    /// directory's sentence-transformers files say (mean pooling without them).
    pub fn load(dir: &Path, pooling: Option<Pooling>) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config_text = read_text(&config_path)?;
        let raw: serde_json::Value =
            serde_json::from_str(&config_text).map_err(|e| file_error(&config_path, e))?;
        let model_type = raw.get("model_type").and_then(|v| v.as_str());
        if !matches!(model_type, None | Some("bert")) {
            return Err(TextEncoderError::File(HubError::File {
                path: config_path,
                message: format!(
                    "`model_type` is `{}`; the sentence encoder reads the BERT architecture (e.g. sentence-transformers/all-MiniLM-L6-v2)",
                    model_type.unwrap_or_default()
                ),
            }));
        }
        let config: BertConfig =
            serde_json::from_str(&config_text).map_err(|e| file_error(&config_path, e))?;

        let tensors = read_weights(dir)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let model = BertModel::load(vb, &config).map_err(|e| TextEncoderError::Model {
            dir: dir.to_path_buf(),
            message: format!("the weights do not fit config.json: {e}"),
        })?;

        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| {
            if tokenizer_path.is_file() {
                file_error(&tokenizer_path, e)
            } else {
                missing(&tokenizer_path)
            }
        })?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: config.max_position_embeddings,
                ..Default::default()
            }))
            .map_err(|e| file_error(&tokenizer_path, e))?;

        let declared = SentenceTransformersConfig::read(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            model,
            tokenizer,
            config,
            pooling: pooling.or(declared.pooling).unwrap_or(Pooling::Mean),
            normalize: declared.normalize,
        })
    }

    /// As [`SentenceEncoder::load`], but one copy per directory and pooling in
    /// the process while anyone holds it.
    pub fn load_shared(dir: &Path, pooling: Option<Pooling>) -> Result<Arc<Self>> {
        let key = (
            dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()),
            pooling,
        );
        let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(encoder) = loaded.get(&key).and_then(Weak::upgrade) {
            return Ok(encoder);
        }
        let encoder = Arc::new(Self::load(dir, pooling)?);
        loaded.insert(key, Arc::downgrade(&encoder));
        Ok(encoder)
    }

    /// Width of the sentence vectors (`d_s`).
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Whether vectors are scaled to unit length (a sentence-transformers
    /// `Normalize` module in the directory).
    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Encodes `texts` into `B×d_s` vectors of `dtype` on `device`. The result
    /// carries no gradient path: the encoder is frozen.
    pub fn encode(&self, texts: &[String], device: &Device, dtype: DType) -> Result<Tensor> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| TextEncoderError::Model {
                dir: self.dir.clone(),
                message: format!("tokenizing the query: {e}"),
            })?;
        let b = texts.len();
        let t = encodings
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(0)
            .max(1);
        let pad = self.config.pad_token_id as u32;
        let mut ids = vec![pad; b * t];
        let mut mask = vec![0u32; b * t];
        for (i, encoding) in encodings.iter().enumerate() {
            for (j, &id) in encoding.get_ids().iter().enumerate() {
                ids[i * t + j] = id;
                mask[i * t + j] = 1;
            }
        }
        let cpu = Device::Cpu;
        let ids = Tensor::from_vec(ids, (b, t), &cpu)?;
        let mask = Tensor::from_vec(mask, (b, t), &cpu)?;
        let token_types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &token_types, Some(&mask))?;
        let pooled = match self.pooling {
            Pooling::Cls => hidden.get_on_dim(1, 0)?,
            Pooling::Mean => {
                let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
                let counts = mask.sum(1)?.clamp(1.0, f64::INFINITY)?;
                summed.broadcast_div(&counts)?
            }
        };
        let pooled = if self.normalize {
            let norm = pooled
                .sqr()?
                .sum_keepdim(D::Minus1)?
                .sqrt()?
                .clamp(1e-12, f64::INFINITY)?;
            pooled.broadcast_div(&norm)?
        } else {
            pooled
        };
        Ok(pooled.to_dtype(dtype)?.to_device(device)?.detach())
    }
}

/// What a sentence-transformers directory says about pooling and normalisation.
#[derive(Debug, Default, PartialEq)]
struct SentenceTransformersConfig {
    pooling: Option<Pooling>,
    normalize: bool,
}

impl SentenceTransformersConfig {
    fn read(dir: &Path) -> Result<Self> {
        let modules_path = dir.join("modules.json");
        if !modules_path.is_file() {
            return Ok(Self::default());
        }
        #[derive(Deserialize)]
        struct Module {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            path: String,
        }
        let modules: Vec<Module> = serde_json::from_str(&read_text(&modules_path)?)
            .map_err(|e| file_error(&modules_path, e))?;
        let mut out = Self::default();
        for module in &modules {
            let kind = module.kind.rsplit('.').next().unwrap_or_default();
            match kind {
                "Transformer" => {}
                "Normalize" => out.normalize = true,
                "Pooling" => {
                    let path = dir.join(&module.path).join("config.json");
                    let cfg: serde_json::Value = serde_json::from_str(&read_text(&path)?)
                        .map_err(|e| file_error(&path, e))?;
                    let on = |key: &str| cfg.get(key).and_then(|v| v.as_bool()) == Some(true);
                    out.pooling = Some(match (on("pooling_mode_mean_tokens"), on("pooling_mode_cls_token")) {
                        (true, false) => Pooling::Mean,
                        (false, true) => Pooling::Cls,
                        _ => {
                            return Err(TextEncoderError::File(HubError::File {
                                path,
                                message: "only one of `pooling_mode_mean_tokens` and `pooling_mode_cls_token` is supported; set the recipe's `pooling` to choose".into(),
                            }))
                        }
                    });
                }
                other => {
                    return Err(TextEncoderError::File(HubError::File {
                        path: modules_path.clone(),
                        message: format!(
                            "module `{other}` ({}) is not supported: the sentence encoder runs Transformer → Pooling → Normalize",
                            module.kind
                        ),
                    }))
                }
            }
        }
        Ok(out)
    }
}

/// The weights in `dir`: `model.safetensors`, or the shards a
/// `model.safetensors.index.json` lists.
fn read_weights(dir: &Path) -> Result<std::collections::HashMap<String, Tensor>> {
    vlmkit_core::hub::read_weights(dir).map_err(|e| match e {
        HubError::File { path, message } if path == dir => {
            TextEncoderError::Model { dir: path, message }
        }
        other => other.into(),
    })
}

fn read_text(path: &Path) -> Result<String> {
    vlmkit_core::hub::read_text(path).map_err(|e| match e {
        HubError::File { .. } => missing(path),
        other => other.into(),
    })
}

fn missing(path: &Path) -> TextEncoderError {
    file_error(
        path,
        "missing (a sentence encoder directory holds config.json, model.safetensors and tokenizer.json)",
    )
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> TextEncoderError {
    TextEncoderError::File(HubError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
#[cfg(test)]
mod tests;
