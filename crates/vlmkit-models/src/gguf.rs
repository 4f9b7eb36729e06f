//! GGUF language models (llama.cpp's format): a LLaMA-family file read into
//! [`Llama`] with Hugging Face names, its weights dequantised to f32 for training,
//! and its tokenizer rebuilt from the metadata as a `tokenizer.json` document.
//!
//! Exactness matters more than coverage: what a GGUF file says and vlmkit does
//! not compute the same way (rope scaling, partial rotary embeddings, experts, a
//! SentencePiece vocabulary, an unknown pre-tokenizer) is refused by name.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use serde_json::json;
use vlmkit_core::params::ParamStore;

use crate::hf::{HfError, LanguageCheckpoint};
use crate::llama::LlamaConfig;

/// The 4-byte magic every GGUF file starts with.
const MAGIC: &[u8; 4] = b"GGUF";

/// Whether `path` is a GGUF file (by its first bytes, whatever its name).
/// Whether a model source names one file rather than a directory: GGUF is
/// the one single-file format read, so such a file is opened as GGUF and a
/// corrupt one refused as a GGUF file (not looked into as a directory).
pub fn is_model_file(path: &Path) -> bool {
    path.is_file()
}

pub fn is_gguf(path: &Path) -> bool {
    let mut head = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head == MAGIC
}

/// A parsed GGUF file: its metadata and where each tensor lies.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
}

fn error(path: &Path, key: &str, message: impl Into<String>) -> HfError {
    HfError::Config {
        path: path.to_path_buf(),
        key: key.to_string(),
        message: message.into(),
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, HfError> {
        let mut file = std::fs::File::open(path).map_err(|e| HfError::Weights {
            dir: path.to_path_buf(),
            message: format!("cannot open: {e}"),
        })?;
        let content = Content::read(&mut file).map_err(|e| HfError::Weights {
            dir: path.to_path_buf(),
            message: format!("not a readable GGUF file: {e}"),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn required(&self, key: &str) -> Result<&Value, HfError> {
        self.get(key)
            .ok_or_else(|| error(&self.path, key, "missing from the GGUF metadata"))
    }

    fn usize(&self, key: &str) -> Result<usize, HfError> {
        let v = self.required(key)?;
        v.to_u64().map(|n| n as usize).map_err(|_| {
            error(
                &self.path,
                key,
                format!("expected a whole number, got {v:?}"),
            )
        })
    }

    fn optional_usize(&self, key: &str) -> Result<Option<usize>, HfError> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.usize(key).map(Some),
        }
    }

    /// A float as the f64 its f32 prints as (`1e-5`, not `9.99999974e-6`): GGUF
    /// stores f32, Hugging Face configs the decimal.
    fn float(&self, key: &str) -> Result<Option<f64>, HfError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let x = match v {
            Value::F32(x) => format!("{x}").parse::<f64>().unwrap_or(*x as f64),
            Value::F64(x) => *x,
            other => {
                return Err(error(
                    &self.path,
                    key,
                    format!("expected a number, got {other:?}"),
                ))
            }
        };
        Ok(Some(x))
    }

    fn string(&self, key: &str) -> Result<Option<&str>, HfError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .to_string()
                .map(|s| Some(s.as_str()))
                .map_err(|_| error(&self.path, key, format!("expected a string, got {v:?}"))),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, HfError> {
        let v = self.required(key)?;
        let bad = || error(&self.path, key, "expected a list of strings");
        v.to_vec()
            .map_err(|_| bad())?
            .iter()
            .map(|s| s.to_string().cloned().map_err(|_| bad()))
            .collect()
    }

    fn architecture(&self) -> Result<&str, HfError> {
        let arch = self
            .string("general.architecture")?
            .ok_or_else(|| error(&self.path, "general.architecture", "missing"))?;
        if arch != "llama" {
            return Err(error(
                &self.path,
                "general.architecture",
                format!("`{arch}`: vlmkit reads GGUF language models of architecture `llama`"),
            ));
        }
        Ok(arch)
    }

    /// The architecture as a [`LanguageCheckpoint`] (model type `llama`).
    pub fn language_checkpoint(&self) -> Result<LanguageCheckpoint, HfError> {
        let arch = self.architecture()?;
        let key = |k: &str| format!("{arch}.{k}");
        let heads = self.usize(&key("attention.head_count"))?;
        let hidden = self.usize(&key("embedding_length"))?;
        let vocab = match self.optional_usize(&key("vocab_size"))? {
            Some(v) => v,
            None => self.strings("tokenizer.ggml.tokens")?.len(),
        };
        let head_dim = match self.optional_usize(&key("attention.key_length"))? {
            Some(d) => d,
            None => hidden / heads.max(1),
        };
        if let Some(rot) = self.optional_usize(&key("rope.dimension_count"))? {
            if rot != head_dim {
                return Err(error(
                    &self.path,
                    &key("rope.dimension_count"),
                    format!("{rot}: rotary embeddings over part of a {head_dim}-wide head are not implemented"),
                ));
            }
        }
        if let Some(kind) = self.string(&key("rope.scaling.type"))? {
            if kind != "none" {
                return Err(error(
                    &self.path,
                    &key("rope.scaling.type"),
                    format!("rope scaling `{kind}` is not implemented (only the default rotary embedding is)"),
                ));
            }
        }
        if self.optional_usize(&key("expert_count"))?.unwrap_or(0) > 0 {
            return Err(error(
                &self.path,
                &key("expert_count"),
                "mixture-of-experts layers are not implemented",
            ));
        }
        let config = LlamaConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: self.usize(&key("feed_forward_length"))?,
            num_hidden_layers: self.usize(&key("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: Some(
                self.optional_usize(&key("attention.head_count_kv"))?
                    .unwrap_or(heads),
            ),
            head_dim: (head_dim != hidden / heads.max(1)).then_some(head_dim),
            max_position_embeddings: self.usize(&key("context_length"))?,
            rms_norm_eps: self
                .float(&key("attention.layer_norm_rms_epsilon"))?
                .ok_or_else(|| {
                    error(
                        &self.path,
                        &key("attention.layer_norm_rms_epsilon"),
                        "missing: LLaMA-family decoders use RMSNorm",
                    )
                })?,
            rope_theta: self.float(&key("rope.freq_base"))?.unwrap_or(10000.0),
            // Without an output matrix the embeddings serve as the head.
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            ..LlamaConfig::default()
        };
        if let Err((k, message)) = config.validate() {
            return Err(error(&self.path, k, message));
        }
        Ok(LanguageCheckpoint {
            path: self.path.clone(),
            model_type: arch.to_string(),
            architectures: vec!["LlamaForCausalLM (from GGUF)".to_string()],
            config,
        })
    }

    /// The quantisation types the tensors use, most common first ("Q4_1 ×210, F32 ×61").
    pub fn file_type(&self) -> String {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for info in self.content.tensor_infos.values() {
            *counts.entry(format!("{:?}", info.ggml_dtype)).or_default() += 1;
        }
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        counts
            .iter()
            .map(|(t, n)| format!("{t} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Elements and tensors stored.
    pub fn stored(&self) -> (usize, usize) {
        let elements = self
            .content
            .tensor_infos
            .values()
            .map(|i| i.shape.elem_count())
            .sum();
        (elements, self.content.tensor_infos.len())
    }

    /// Every tensor dequantised to f32 under its Hugging Face name, the q/k rows
    /// put back in Hugging Face's order.
    pub fn hf_tensors(&self) -> Result<Vec<(String, Tensor)>, HfError> {
        let checkpoint = self.language_checkpoint()?;
        let cfg = &checkpoint.config;
        let mut file = std::fs::File::open(&self.path).map_err(|e| HfError::Weights {
            dir: self.path.clone(),
            message: format!("cannot open: {e}"),
        })?;
        let mut names: Vec<&String> = self.content.tensor_infos.keys().collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let hf = hf_name(name).ok_or_else(|| HfError::Weights {
                dir: self.path.clone(),
                message: format!("tensor `{name}` has no LLaMA counterpart"),
            })?;
            let mut w = self.dequantize(&mut file, name)?;
            if hf.ends_with("self_attn.q_proj.weight") {
                w = unpermute_rows(&w, cfg.num_attention_heads)?;
            } else if hf.ends_with("self_attn.k_proj.weight") {
                w = unpermute_rows(&w, cfg.kv_heads())?;
            }
            out.push((hf, w));
        }
        Ok(out)
    }

    fn dequantize<R: Read + Seek>(&self, reader: &mut R, name: &str) -> Result<Tensor, HfError> {
        let weights_err = |e: candle_core::Error| HfError::Weights {
            dir: self.path.clone(),
            message: format!("tensor `{name}`: {e}"),
        };
        self.content
            .tensor(reader, name, &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu))
            .map_err(weights_err)
    }

    /// The tokenizer the metadata describes, as a `tokenizer.json` document.
    /// Byte-level BPE (`tokenizer.ggml.model = "gpt2"`) only; the pre-tokenizer
    /// follows `tokenizer.ggml.pre` as llama.cpp defines it.
    pub fn tokenizer_json(&self) -> Result<String, HfError> {
        let model_key = "tokenizer.ggml.model";
        let model = self.string(model_key)?.unwrap_or("");
        if model != "gpt2" {
            return Err(error(
                &self.path,
                model_key,
                format!("`{model}`: vlmkit rebuilds byte-level BPE (`gpt2`) tokenizers only; give `llm.tokenizer` a tokenizer.json"),
            ));
        }
        let pre_key = "tokenizer.ggml.pre";
        let pre = self.string(pre_key)?.unwrap_or("default");
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false,
                                "trim_offsets": true, "use_regex": true});
        let pre_tokenizer = match pre {
            "default" | "gpt2" | "mpt" | "olmo" => byte_level,
            // llama.cpp's starcoder family: digits one by one, then GPT-2's regex.
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "\\p{N}"}, "behavior": "Isolated", "invert": false},
                byte_level,
            ]}),
            other => {
                return Err(error(
                    &self.path,
                    pre_key,
                    format!("pre-tokenizer `{other}` is not one vlmkit rebuilds (it knows gpt2, mpt, olmo and the starcoder family: smollm, starcoder, refact, command-r, codeshell, exaone); give `llm.tokenizer` a tokenizer.json"),
                ))
            }
        };
        let tokens = self.strings("tokenizer.ggml.tokens")?;
        let merges: Vec<serde_json::Value> = self
            .strings("tokenizer.ggml.merges")?
            .iter()
            .map(|m| {
                let (a, b) = m.split_once(' ').ok_or_else(|| {
                    error(
                        &self.path,
                        "tokenizer.ggml.merges",
                        format!("`{m}` is not two symbols"),
                    )
                })?;
                Ok(json!([a, b]))
            })
            .collect::<Result<_, HfError>>()?;
        let types: Vec<i64> = match self.get("tokenizer.ggml.token_type") {
            None => vec![1; tokens.len()],
            Some(v) => v
                .to_vec()
                .map_err(|_| error(&self.path, "tokenizer.ggml.token_type", "expected a list"))?
                .iter()
                .map(|t| match t {
                    Value::I32(x) => *x as i64,
                    Value::U32(x) => *x as i64,
                    _ => 1,
                })
                .collect(),
        };
        // CONTROL (3) tokens are special; USER_DEFINED (4) ones are matched whole.
        let added: Vec<serde_json::Value> = tokens
            .iter()
            .zip(types.iter().chain(std::iter::repeat(&1)))
            .enumerate()
            .filter(|(_, (_, &t))| t == 3 || t == 4)
            .map(|(id, (content, &t))| {
                json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": t == 3})
            })
            .collect();
        let vocab: serde_json::Map<String, serde_json::Value> = tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.clone(), json!(id)))
            .collect();
        let flag = |key: &str| matches!(self.get(key), Some(Value::Bool(true)));
        let special = |key: &str| -> Result<Option<(String, u32)>, HfError> {
            match self.optional_usize(key)? {
                Some(id) if id < tokens.len() => Ok(Some((tokens[id].clone(), id as u32))),
                Some(id) => Err(error(
                    &self.path,
                    key,
                    format!("{id} is outside the {} tokens", tokens.len()),
                )),
                None => Ok(None),
            }
        };
        let bos = special("tokenizer.ggml.bos_token_id")?;
        let eos = special("tokenizer.ggml.eos_token_id")?;
        let mut single = Vec::new();
        let mut specials = serde_json::Map::new();
        for (on, token) in [
            (flag("tokenizer.ggml.add_bos_token"), &bos),
            (flag("tokenizer.ggml.add_eos_token"), &eos),
        ] {
            if let (true, Some((content, id))) = (on, token) {
                single.push(json!({"SpecialToken": {"id": content, "type_id": 0}}));
                specials.insert(
                    content.clone(),
                    json!({"id": content, "ids": [id], "tokens": [content]}),
                );
            }
        }
        let post_processor = if single.is_empty() {
            serde_json::Value::Null
        } else {
            let mut pair = single.clone();
            pair.extend(single.iter().cloned());
            json!({"type": "TemplateProcessing", "single": single, "pair": pair,
                   "special_tokens": specials})
        };
        let doc = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merges}
        });
        Ok(doc.to_string())
    }
}

/// The Hugging Face name of a GGUF `llama` tensor.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let (part, kind) = rest.rsplit_once('.')?;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Undoes llama.cpp's q/k row permutation (its converter interleaves the two
/// rotary halves of every head): row `h·d + 2i + j` of the file is row
/// `h·d + j·d/2 + i` of the Hugging Face matrix.
pub fn unpermute_rows(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let head_dim = rows / heads;
    w.reshape((heads, head_dim / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

/// The weights of a GGUF file in `store` under `prefix`, with Hugging Face names.
pub fn insert_gguf_weights(path: &Path, store: &ParamStore, prefix: &str) -> Result<(), HfError> {
    let file = GgufFile::open(path)?;
    let tensors = file
        .hf_tensors()?
        .into_iter()
        .map(|(name, t)| (format!("{prefix}{name}"), t));
    store.insert_tensors(tensors)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // llama.cpp: reshape(n, 2, d/2, in).swapaxes(1, 2): file row h·d + 2i + j
        // holds HF row h·d + j·d/2 + i.
        let (heads, d, cols) = (3usize, 8usize, 2usize);
        let hf: Vec<f32> = (0..heads * d * cols).map(|x| x as f32).collect();
        let mut file = vec![0f32; hf.len()];
        for h in 0..heads {
            for i in 0..d / 2 {
                for j in 0..2 {
                    for c in 0..cols {
                        file[(h * d + 2 * i + j) * cols + c] =
                            hf[(h * d + j * d / 2 + i) * cols + c];
                    }
                }
            }
        }
        let file = Tensor::from_vec(file, (heads * d, cols), &Device::Cpu).unwrap();
        let back = unpermute_rows(&file, heads).unwrap();
        assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), hf);
    }

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(
            hf_name("blk.12.ffn_gate.weight").as_deref(),
            Some("model.layers.12.mlp.gate_proj.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }
}
