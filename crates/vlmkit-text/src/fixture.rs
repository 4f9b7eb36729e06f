//! A small randomly initialised BERT in Hugging Face's directory layout, for
//! tests and examples that need a sentence encoder without downloading one.
//! Its vectors mean nothing; the point is the files and the pipeline.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::json;
use vlmkit_core::rng::Rng;

/// Sizes of the fixture model.
#[derive(Debug, Clone)]
pub struct TinyBert {
    pub hidden_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate_size: usize,
    pub max_positions: usize,
    pub seed: u64,
}

impl Default for TinyBert {
    fn default() -> Self {
        Self {
            hidden_size: 24,
            layers: 2,
            heads: 4,
            intermediate_size: 48,
            max_positions: 64,
            seed: 7,
        }
    }
}

const SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// Writes `config.json`, `tokenizer.json` (WordPiece over `words`, lower-cased,
/// plus BERT's special tokens) and `model.safetensors` (every weight of
/// `BertModel` and its pooler) into `dir`.
pub fn write_random_bert(dir: &Path, words: &[&str], cfg: &TinyBert) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut vocab = serde_json::Map::new();
    for token in SPECIALS
        .iter()
        .map(|s| s.to_string())
        .chain(words.iter().map(|w| w.to_lowercase()))
    {
        if !vocab.contains_key(&token) {
            let id = vocab.len();
            vocab.insert(token, json!(id));
        }
    }
    let vocab_size = vocab.len();
    let id_of = |s: &str| vocab[s].as_u64().expect("ids are numbers");
    let added: Vec<_> = SPECIALS
        .iter()
        .map(|s| {
            json!({"id": id_of(s), "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true,
                       "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing",
                           "sep": ["[SEP]", id_of("[SEP]")], "cls": ["[CLS]", id_of("[CLS]")]},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab},
    });
    write_json(&dir.join("tokenizer.json"), &tokenizer)?;

    let config = json!({
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": cfg.max_positions,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": id_of("[PAD]"),
        "position_embedding_type": "absolute",
        "classifier_dropout": null,
    });
    write_json(&dir.join("config.json"), &config)?;

    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        (
            "embeddings.word_embeddings.weight".into(),
            vec![vocab_size, h],
        ),
        (
            "embeddings.position_embeddings.weight".into(),
            vec![cfg.max_positions, h],
        ),
        ("embeddings.token_type_embeddings.weight".into(), vec![2, h]),
        ("embeddings.LayerNorm.weight".into(), vec![h]),
        ("embeddings.LayerNorm.bias".into(), vec![h]),
        ("pooler.dense.weight".into(), vec![h, h]),
        ("pooler.dense.bias".into(), vec![h]),
    ];
    for l in 0..cfg.layers {
        let p = format!("encoder.layer.{l}");
        for name in ["query", "key", "value"] {
            shapes.push((format!("{p}.attention.self.{name}.weight"), vec![h, h]));
            shapes.push((format!("{p}.attention.self.{name}.bias"), vec![h]));
        }
        shapes.push((format!("{p}.attention.output.dense.weight"), vec![h, h]));
        shapes.push((format!("{p}.attention.output.dense.bias"), vec![h]));
        shapes.push((format!("{p}.attention.output.LayerNorm.weight"), vec![h]));
        shapes.push((format!("{p}.attention.output.LayerNorm.bias"), vec![h]));
        shapes.push((format!("{p}.intermediate.dense.weight"), vec![i, h]));
        shapes.push((format!("{p}.intermediate.dense.bias"), vec![i]));
        shapes.push((format!("{p}.output.dense.weight"), vec![h, i]));
        shapes.push((format!("{p}.output.dense.bias"), vec![h]));
        shapes.push((format!("{p}.output.LayerNorm.weight"), vec![h]));
        shapes.push((format!("{p}.output.LayerNorm.bias"), vec![h]));
    }
    let mut rng = Rng::new(cfg.seed);
    let mut tensors = HashMap::new();
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if name.contains("LayerNorm.weight") {
            (0..n).map(|_| 1.0 + 0.1 * rng.normal() as f32).collect()
        } else {
            (0..n).map(|_| 0.2 * rng.normal() as f32).collect()
        };
        let tensor =
            Tensor::from_vec(values, shape, &Device::Cpu).map_err(std::io::Error::other)?;
        tensors.insert(name, tensor);
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))
        .map_err(std::io::Error::other)
}

fn write_json(path: &Path, value: &serde_json::Value) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    std::fs::write(path, text)
}
