//! `vlmkit export RUN --format llava-hf`: a trained LLaVA-1.5-style model (a
//! CLIP or SigLIP tower, the `mlp` connector, a LLaMA-family decoder) as a
//! transformers `LlavaForConditionalGeneration` directory.
//!
//! The directory holds `config.json`, the weights (one file, or shards with
//! `model.safetensors.index.json`), `tokenizer.json` with `tokenizer_config.json`
//! and the chat template, `generation_config.json`, and the processor's
//! `preprocessor_config.json` and `processor_config.json`. It is written beside
//! its destination and renamed into place, so a failed export leaves nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde_json::{json, Value};
use vlmkit_core::fsutil::{sync_dir, write_atomic};
use vlmkit_core::params::save_safetensors_atomic;
use vlmkit_data::TextTokenizer;
use vlmkit_models::hf::llava::{self, LlavaSettings};

use crate::checkpoint::{io, pt_metadata};
use crate::checkpoint_plan;
use crate::{Components, PipelineError, Plan};

/// How the weights are written.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The stored dtype (the run keeps f32).
    pub dtype: DType,
    /// Largest shard in bytes; a bigger model is split into several files.
    pub max_shard_bytes: u64,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            // transformers' own `max_shard_size` default.
            max_shard_bytes: 5_000_000_000,
        }
    }
}

/// What [`export_llava_hf`] wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub dir: PathBuf,
    /// The checkpoint it came from.
    pub checkpoint: PathBuf,
    pub tensors: usize,
    pub parameters: usize,
    /// The weight files, in order.
    pub weight_files: Vec<String>,
    pub image_token_index: u32,
    pub image_seq_length: usize,
    /// Embedding rows before and after making room for `<image>` (equal when it
    /// already had a row).
    pub vocab_rows: (usize, usize),
    pub vision_model_type: String,
    pub text_model_type: String,
}

fn refuse(message: impl Into<String>) -> PipelineError {
    PipelineError::ExportRefused(message.into())
}

/// The checkpoint's settings as a LLaVA model would have them, or why it has none.
struct Layout {
    vision: Value,
    text: Value,
    settings: LlavaSettings,
    preprocessor: Value,
    processor: Value,
    embedding_rows: usize,
    vocab_rows: usize,
}

fn layout(plan: &Plan, tokenizer: &TextTokenizer, dtype: DType) -> Result<Layout, PipelineError> {
    let kind = plan.model.connector.kind();
    if kind != "mlp" {
        return Err(refuse(format!(
            "the llava-hf format holds LLaVA-1.5's projector, the `mlp` connector; this run's connector is `{kind}`, which LlavaForConditionalGeneration has no place for"
        )));
    }
    let tower = plan.model.vision.config.llava_tower().map_err(refuse)?;
    // The projector reads one hidden state, by transformers' indexing as here.
    let base_layer = plan
        .model
        .connector
        .resolved_table()
        .get("base_layer")
        .and_then(toml::Value::as_integer)
        .ok_or_else(|| refuse("the mlp connector names no `base_layer`"))?;
    let has_cls = plan.model.env.vision.has_cls;
    let llm = &plan.model.llm.config;
    let embedding_rows = llm.vocab_size;
    // transformers embeds every id before putting the image features in place,
    // so `<image>` needs a row (vlmkit never embeds it, and may have none).
    let vocab_rows = embedding_rows.max(tokenizer.image as usize + 1);
    let text = llava::text_config_json(llm, vocab_rows).map_err(refuse)?;
    let settings = LlavaSettings {
        vision_feature_layer: base_layer,
        drop_cls: has_cls,
        image_token_index: tokenizer.image,
        image_seq_length: plan.model.visual_tokens,
        pad_token_id: tokenizer.pad,
        torch_dtype: match dtype {
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
            _ => "float32",
        },
    };
    Ok(Layout {
        vision: tower.vision_config,
        text,
        // What evaluation and inference preprocess with: the last stage's.
        preprocessor: plan.inputs.processor().to_preprocessor_config(),
        processor: llava::processor_config_json(
            tower.patch_size,
            has_cls,
            vlmkit_data::IMAGE_TOKEN,
        ),
        settings,
        embedding_rows,
        vocab_rows,
    })
}

/// The weights under their LLaVA names, the embeddings (and an untied head)
/// grown to `vocab_rows` with zero rows, cast to `dtype`.
fn llava_weights(
    model: BTreeMap<String, Tensor>,
    layout: &Layout,
    dtype: DType,
) -> Result<BTreeMap<String, Tensor>, PipelineError> {
    let mut out = BTreeMap::new();
    for (name, tensor) in model {
        let renamed = llava::export_name(&name).ok_or_else(|| {
            refuse(format!(
                "the checkpoint's weight `{name}` has no place in a LLaVA model"
            ))
        })?;
        let grows = matches!(
            name.as_str(),
            "llm.model.embed_tokens.weight" | "llm.lm_head.weight"
        );
        let tensor = if grows && layout.vocab_rows > layout.embedding_rows {
            let (rows, width) = tensor.dims2()?;
            let extra = Tensor::zeros(
                (layout.vocab_rows - rows, width),
                tensor.dtype(),
                tensor.device(),
            )?;
            Tensor::cat(&[&tensor, &extra], 0)?
        } else {
            tensor
        };
        out.insert(renamed, tensor.to_dtype(dtype)?);
    }
    Ok(out)
}

/// Splits `weights` into shards of at most `max_bytes` (a tensor larger than that
/// gets a shard of its own), in name order.
fn shards(weights: BTreeMap<String, Tensor>, max_bytes: u64) -> Vec<BTreeMap<String, Tensor>> {
    let mut shards: Vec<BTreeMap<String, Tensor>> = vec![BTreeMap::new()];
    let mut filled = 0u64;
    for (name, tensor) in weights {
        let bytes = (tensor.elem_count() * tensor.dtype().size_in_bytes()) as u64;
        let last = shards.last_mut().expect("never empty");
        if !last.is_empty() && filled + bytes > max_bytes {
            shards.push(BTreeMap::new());
            filled = 0;
        }
        filled += bytes;
        shards.last_mut().expect("never empty").insert(name, tensor);
    }
    shards
}

/// The run's `tokenizer.json` as transformers should apply it: the processor
/// tokenises with special tokens, so the post-processor adds BOS exactly when
/// vlmkit does (it prepends `<s>` when the vocabulary has one) and nothing else.
fn exported_tokenizer_json(text: &str, tokenizer: &TextTokenizer) -> Result<Value, PipelineError> {
    let mut value: Value = serde_json::from_str(text)
        .map_err(|e| refuse(format!("the checkpoint's tokenizer.json: {e}")))?;
    value["post_processor"] = match tokenizer.bos {
        Some(bos) => json!({
            "type": "TemplateProcessing",
            "single": [
                { "SpecialToken": { "id": "<s>", "type_id": 0 } },
                { "Sequence": { "id": "A", "type_id": 0 } }
            ],
            "pair": [
                { "SpecialToken": { "id": "<s>", "type_id": 0 } },
                { "Sequence": { "id": "A", "type_id": 0 } },
                { "Sequence": { "id": "B", "type_id": 1 } }
            ],
            "special_tokens": { "<s>": { "id": "<s>", "ids": [bos], "tokens": ["<s>"] } }
        }),
        // Byte-level offsets trimming adds no token; keep it.
        None if value["post_processor"]["type"] == "ByteLevel" => value["post_processor"].clone(),
        None => Value::Null,
    };
    Ok(value)
}

fn token_text(tokenizer: &TextTokenizer, id: Option<u32>) -> Value {
    id.and_then(|id| tokenizer.id_to_token(id))
        .map_or(Value::Null, Value::String)
}

/// `tokenizer_config.json`: the special tokens, the chat template, and the
/// classes that read the directory.
fn tokenizer_config(plan: &Plan, tokenizer: &TextTokenizer, max_length: usize) -> Value {
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "processor_class": "LlavaProcessor",
        "bos_token": token_text(tokenizer, tokenizer.bos),
        "eos_token": token_text(tokenizer, Some(tokenizer.eos)),
        "pad_token": token_text(tokenizer, Some(tokenizer.pad)),
        "unk_token": token_text(tokenizer, tokenizer.token_to_id("<unk>")),
        "add_bos_token": tokenizer.bos.is_some(),
        "add_eos_token": false,
        "model_max_length": max_length,
        "padding_side": "left",
        // What the model takes: no `token_type_ids`, which `generate` refuses.
        "model_input_names": ["input_ids", "attention_mask"],
        "chat_template": plan.inputs.template.jinja(),
    })
}

fn pretty(value: &Value) -> Vec<u8> {
    let mut text = serde_json::to_string_pretty(value).expect("JSON serialises");
    text.push('\n');
    text.into_bytes()
}

/// Writes the model of `run` (a run directory or a checkpoint) to `out` as a
/// `LlavaForConditionalGeneration` directory. `out` must not exist yet.
pub fn export_llava_hf(
    run: &Path,
    out: &Path,
    components: &Components,
    options: &ExportOptions,
) -> Result<ExportSummary, PipelineError> {
    if !matches!(options.dtype, DType::F32 | DType::BF16 | DType::F16) {
        return Err(refuse(format!(
            "--dtype {:?}: the llava-hf format is written as f32, bf16 or f16",
            options.dtype
        )));
    }
    if out.exists() {
        return Err(refuse(format!(
            "{} already exists; export writes a new directory",
            out.display()
        )));
    }
    let (checkpoint, ck, plan) = checkpoint_plan(run, components, None, &[])?;
    let tokenizer = plan.tokenizer()?;
    let layout = layout(&plan, tokenizer, options.dtype)?;

    let weights = llava_weights(ck.model, &layout, options.dtype)?;
    let tensors = weights.len();
    let parameters = weights.values().map(Tensor::elem_count).sum();
    let shards = shards(weights, options.max_shard_bytes);

    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let name = out
        .file_name()
        .ok_or_else(|| refuse(format!("{}: not a directory name", out.display())))?
        .to_string_lossy()
        .into_owned();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let written = write_directory(&tmp, &plan, tokenizer, &layout, shards);
    let weight_files = match written {
        Ok(files) => files,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, out).map_err(io(out))?;
    sync_dir(Some(&parent)).map_err(io(&parent))?;
    Ok(ExportSummary {
        dir: out.to_path_buf(),
        checkpoint,
        tensors,
        parameters,
        weight_files,
        image_token_index: layout.settings.image_token_index,
        image_seq_length: layout.settings.image_seq_length,
        vocab_rows: (layout.embedding_rows, layout.vocab_rows),
        vision_model_type: layout.vision["model_type"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        text_model_type: layout.text["model_type"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    })
}

fn write_directory(
    dir: &Path,
    plan: &Plan,
    tokenizer: &TextTokenizer,
    layout: &Layout,
    shards: Vec<BTreeMap<String, Tensor>>,
) -> Result<Vec<String>, PipelineError> {
    let write = |file: &str, bytes: &[u8]| {
        let path = dir.join(file);
        write_atomic(&path, bytes).map_err(io(&path))
    };
    let count = shards.len();
    let mut files = Vec::with_capacity(count);
    let mut index = BTreeMap::new();
    let mut total_bytes = 0u64;
    for (i, shard) in shards.into_iter().enumerate() {
        let file = if count == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{count:05}.safetensors", i + 1)
        };
        for (name, tensor) in &shard {
            total_bytes += (tensor.elem_count() * tensor.dtype().size_in_bytes()) as u64;
            index.insert(name.clone(), file.clone());
        }
        let path = dir.join(&file);
        save_safetensors_atomic(&shard, pt_metadata(), &path).map_err(io(&path))?;
        files.push(file);
    }
    if count > 1 {
        write(
            "model.safetensors.index.json",
            &pretty(&json!({
                "metadata": { "total_size": total_bytes },
                "weight_map": index,
            })),
        )?;
    }
    write(
        "config.json",
        &pretty(&llava::config_json(
            layout.vision.clone(),
            layout.text.clone(),
            &layout.settings,
        )),
    )?;
    write(
        "generation_config.json",
        &pretty(&json!({
            "bos_token_id": tokenizer.bos,
            "eos_token_id": tokenizer.eos,
            "pad_token_id": tokenizer.pad,
        })),
    )?;
    write(
        "tokenizer.json",
        // With `<image>`, which the tokenizer adds when its file lacks it.
        &pretty(&exported_tokenizer_json(&tokenizer.to_json()?, tokenizer)?),
    )?;
    let tokenizer_config = tokenizer_config(
        plan,
        tokenizer,
        plan.model.llm.config.max_position_embeddings,
    );
    write("tokenizer_config.json", &pretty(&tokenizer_config))?;
    // Processors read their template from here (transformers ≥ 4.52).
    write(
        "chat_template.jinja",
        plan.inputs.template.jinja().as_bytes(),
    )?;
    write("preprocessor_config.json", &pretty(&layout.preprocessor))?;
    write("processor_config.json", &pretty(&layout.processor))?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_keep_name_order_and_the_size_limit() {
        let t = |n: usize| Tensor::zeros(n, DType::F32, &candle_core::Device::Cpu).unwrap();
        let weights = BTreeMap::from([
            ("a".to_string(), t(10)),
            ("b".to_string(), t(10)),
            ("c".to_string(), t(30)),
            ("d".to_string(), t(5)),
        ]);
        let names = |s: &BTreeMap<String, Tensor>| s.keys().cloned().collect::<Vec<_>>();
        let split = shards(weights.clone(), 150);
        assert_eq!(
            split.iter().map(names).collect::<Vec<_>>(),
            [vec!["a", "b"], vec!["c", "d"]]
        );
        // A tensor above the limit still gets written, alone.
        let split = shards(weights.clone(), 20);
        assert_eq!(split.len(), 4);
        assert_eq!(shards(weights, 1 << 30).len(), 1);
    }
}
