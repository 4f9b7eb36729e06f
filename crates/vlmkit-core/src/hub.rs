//! Reading Hugging Face model directories: `config.json` and the weights, from
//! `model.safetensors` or the shards `model.safetensors.index.json` lists.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

/// Why a model directory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl HubError {
    fn file(path: &Path, message: impl std::fmt::Display) -> Self {
        HubError::File {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}

/// The text of `path`; a missing file says so.
pub fn read_text(path: &Path) -> Result<String, HubError> {
    std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            HubError::file(path, "missing")
        } else {
            HubError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// `dir/config.json`, parsed.
pub fn read_config(dir: &Path) -> Result<serde_json::Value, HubError> {
    let path = dir.join("config.json");
    serde_json::from_str(&read_text(&path)?).map_err(|e| HubError::file(&path, e))
}

/// The weight files of `dir`: `model.safetensors`, or the shards of
/// `model.safetensors.index.json`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, HubError> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.is_file() {
        return Ok(vec![single]);
    }
    if index.is_file() {
        let parsed: serde_json::Value =
            serde_json::from_str(&read_text(&index)?).map_err(|e| HubError::file(&index, e))?;
        let map = parsed
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| HubError::file(&index, "no `weight_map` object"))?;
        let mut shards: Vec<PathBuf> = map
            .values()
            .filter_map(|v| v.as_str())
            .map(|f| dir.join(f))
            .collect();
        shards.sort();
        shards.dedup();
        return Ok(shards);
    }
    let hint = if dir.join("pytorch_model.bin").is_file()
        || dir.join("pytorch_model.bin.index.json").is_file()
    {
        " (only pytorch_model.bin is there: convert it to safetensors, e.g. with transformers' `save_pretrained(..., safe_serialization=True)`)"
    } else {
        ""
    };
    Err(HubError::file(
        dir,
        format!("no model.safetensors or model.safetensors.index.json{hint}"),
    ))
}

/// Every weight of `dir` as an f32 tensor on the CPU, by its checkpoint name.
pub fn read_weights(dir: &Path) -> Result<HashMap<String, Tensor>, HubError> {
    let mut tensors = HashMap::new();
    for file in weight_files(dir)? {
        if !file.is_file() {
            return Err(HubError::file(&file, "missing (named by the shard index)"));
        }
        let loaded = candle_core::safetensors::load(&file, &Device::Cpu)
            .map_err(|e| HubError::file(&file, e))?;
        for (name, tensor) in loaded {
            let tensor = tensor
                .to_dtype(DType::F32)
                .map_err(|e| HubError::file(&file, format!("`{name}`: {e}")))?;
            tensors.insert(name, tensor);
        }
    }
    Ok(tensors)
}

/// What the safetensors headers of `dir` say, without reading the weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWeights {
    /// The dtypes the weights are stored in.
    pub dtypes: Vec<String>,
    /// Their number of elements.
    pub elements: usize,
    pub tensors: usize,
}

/// The dtypes and sizes of the weights of `dir`, from the safetensors headers only.
pub fn stored_weights(dir: &Path) -> Result<StoredWeights, HubError> {
    use std::io::Read;
    let mut dtypes = std::collections::BTreeSet::new();
    let (mut elements, mut tensors) = (0usize, 0usize);
    for file in weight_files(dir)? {
        let io = |source| HubError::Io {
            path: file.clone(),
            source,
        };
        let mut f = std::fs::File::open(&file).map_err(io)?;
        let mut len = [0u8; 8];
        f.read_exact(&mut len).map_err(io)?;
        let len = u64::from_le_bytes(len);
        if len > 100_000_000 {
            return Err(HubError::file(
                &file,
                "not a safetensors file (header too large)",
            ));
        }
        let mut header = vec![0u8; len as usize];
        f.read_exact(&mut header).map_err(io)?;
        let header: serde_json::Value =
            serde_json::from_slice(&header).map_err(|e| HubError::file(&file, e))?;
        let entries = header.as_object().into_iter().flatten();
        for (name, entry) in entries.filter(|(name, _)| *name != "__metadata__") {
            let dtype = entry.get("dtype").and_then(|d| d.as_str());
            let shape = entry.get("shape").and_then(|s| s.as_array());
            let (Some(dtype), Some(shape)) = (dtype, shape) else {
                return Err(HubError::file(
                    &file,
                    format!("`{name}`: no dtype or shape in the header"),
                ));
            };
            dtypes.insert(dtype.to_lowercase());
            elements += shape
                .iter()
                .map(|d| d.as_u64().unwrap_or(0) as usize)
                .product::<usize>();
            tensors += 1;
        }
    }
    Ok(StoredWeights {
        dtypes: dtypes.into_iter().collect(),
        elements,
        tensors,
    })
}
