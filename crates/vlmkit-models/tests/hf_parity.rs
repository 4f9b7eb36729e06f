//! Hugging Face checkpoints against transformers: tiny randomly initialised models
//! made by `scripts/make-parity-fixtures.py` (tests/fixtures/hf/), whose every
//! hidden state and logits vlmkit must reproduce to 1e-4; and the refusals that
//! keep a checkpoint from loading approximately.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use vlmkit_core::gradcheck::max_abs_diff;
use vlmkit_models::hf::vision::{load_vision_model, read_vision_config, vision_hidden_states};
use vlmkit_models::hf::{hidden_states, load_language_model, read_language_config, HfError};
use vlmkit_models::VitConfig;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/hf")
        .join(name)
}

/// Largest difference over the positions the attention mask keeps (transformers'
/// states at padded positions are not meaningful).
fn max_diff_where_valid(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    let keep = mask
        .to_dtype(DType::F32)
        .unwrap()
        .unsqueeze(2)
        .unwrap()
        .broadcast_as(a.shape())
        .unwrap();
    max_abs_diff(&(a * &keep).unwrap(), &(b * &keep).unwrap()).unwrap()
}

#[test]
fn language_models_match_transformers_hidden_state_by_hidden_state() {
    let cases = [
        ("llama-gqa-rope", "llama", false),
        ("smollm-tied", "llama", true),
        ("mistral-gqa", "mistral", false),
        ("qwen2-bias-tied", "qwen2", true),
    ];
    for (name, model_type, tied) in cases {
        let dir = fixture(name);
        let (checkpoint, model) = load_language_model(&dir, &Device::Cpu).unwrap();
        assert_eq!(checkpoint.model_type, model_type);
        assert_eq!(checkpoint.config.tie_word_embeddings, tied, "{name}");
        let expected =
            candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
        let mask = &expected["attention_mask"];
        let out = hidden_states(&model, &expected["input_ids"], Some(mask)).unwrap();
        let layers = checkpoint.config.num_hidden_layers;
        assert_eq!(out.hidden_states.len(), layers + 1);
        for (i, h) in out.hidden_states.iter().enumerate() {
            let d = max_diff_where_valid(h, &expected[&format!("hidden_states.{i}")], mask);
            assert!(d < 1e-4, "{name}: hidden_states.{i} differs by {d}");
        }
        let d = max_diff_where_valid(&out.logits, &expected["logits"], mask);
        assert!(d < 1e-4, "{name}: logits differ by {d}");
    }
    // The fixtures are not trivially close: the scrambled weights give states of
    // visible size.
    let expected = candle_core::safetensors::load(
        fixture("qwen2-bias-tied").join("expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let top = expected["hidden_states.2"]
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    assert!(top.to_scalar::<f32>().unwrap() > 1.0);
}

/// The tiny GGUF fixture: Q4_1 linear weights, a Q8_0 embedding, permuted q/k
/// rows, tied embeddings, a byte-level BPE vocabulary with `smollm` pre-tokenizing.
fn gguf_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf")
}

#[test]
fn gguf_language_model_matches_transformers_gguf_loader() {
    let dir = gguf_fixture();
    let path = dir.join("tiny-llama.Q4_1.gguf");
    assert!(vlmkit_models::gguf::is_gguf(&path));
    assert!(!vlmkit_models::gguf::is_gguf(
        &dir.join("expected.safetensors")
    ));
    let (checkpoint, model) = load_language_model(&path, &Device::Cpu).unwrap();
    let cfg = &checkpoint.config;
    assert_eq!(checkpoint.model_type, "llama");
    assert_eq!(
        (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers),
        (264, 64, 2)
    );
    assert_eq!((cfg.num_attention_heads, cfg.kv_heads()), (4, 2));
    assert_eq!((cfg.rope_theta, cfg.rms_norm_eps), (100000.0, 1e-5));
    assert!(cfg.tie_word_embeddings);
    let expected =
        candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let mask = &expected["attention_mask"];
    let out = hidden_states(&model, &expected["input_ids"], Some(mask)).unwrap();
    assert_eq!(out.hidden_states.len(), 3);
    for (i, h) in out.hidden_states.iter().enumerate() {
        let d = max_diff_where_valid(h, &expected[&format!("hidden_states.{i}")], mask);
        assert!(d < 1e-4, "gguf: hidden_states.{i} differs by {d}");
    }
    let d = max_diff_where_valid(&out.logits, &expected["logits"], mask);
    assert!(d < 1e-4, "gguf: logits differ by {d}");
}

#[test]
fn gguf_tokenizer_is_rebuilt_from_the_metadata() {
    let dir = gguf_fixture();
    let file = vlmkit_models::gguf::GgufFile::open(&dir.join("tiny-llama.Q4_1.gguf")).unwrap();
    let tokenizer = vlmkit_data::TextTokenizer::from_json(&file.tokenizer_json().unwrap()).unwrap();
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("tokenizer-expected.json")).unwrap(),
    )
    .unwrap();
    let texts = expected["texts"].as_array().unwrap();
    let ids = expected["ids"].as_array().unwrap();
    for (text, ids) in texts.iter().zip(ids) {
        let text = text.as_str().unwrap();
        let want: Vec<u32> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tokenizer.encode(text).unwrap(), want, "{text:?}");
        assert_eq!(
            tokenizer.decode(&want).unwrap(),
            text.replace("<|im_start|>", "").replace("<|im_end|>", ""),
            "decoding {text:?}"
        );
    }
    // ChatML's end token ends sequences; `<image>` is appended after the vocabulary.
    assert_eq!(tokenizer.eos, 2);
    assert_eq!(tokenizer.bos, None);
    assert_eq!(tokenizer.image, 264);
}

#[test]
fn vision_encoders_match_transformers_hidden_state_by_hidden_state() {
    // (fixture, model_type, kind, hidden-state shape of the first sample)
    let cases = [
        ("clip-vision", "clip_vision_model", "clip", vec![17, 32]),
        ("clip-full", "clip", "clip", vec![17, 32]),
        (
            "siglip-vision",
            "siglip_vision_model",
            "siglip",
            vec![9, 32],
        ),
        ("convnext", "convnext", "convnext", vec![8, 8, 8]),
    ];
    for (name, model_type, kind, shape) in cases {
        let dir = fixture(name);
        let (checkpoint, encoder) = load_vision_model(&dir, &Device::Cpu).unwrap();
        assert_eq!(checkpoint.model_type, model_type, "{name}");
        assert_eq!(checkpoint.kind, kind, "{name}");
        let expected =
            candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
        let states = vision_hidden_states(
            encoder.as_ref(),
            &*checkpoint.config,
            &expected["pixel_values"],
        )
        .unwrap();
        let stored = expected
            .keys()
            .filter(|k| k.starts_with("hidden_states."))
            .count();
        assert_eq!(states.len(), stored, "{name}: number of hidden states");
        assert_eq!(&states[0].dims()[1..], shape.as_slice(), "{name}");
        // States of visible size (2.8–5.3 here): 1e-4 is a real bound.
        let top = expected["hidden_states.1"]
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        assert!(top.to_scalar::<f32>().unwrap() > 1.0, "{name}");
        for (i, h) in states.iter().enumerate() {
            let want = &expected[&format!("hidden_states.{i}")];
            assert_eq!(h.dims(), want.dims(), "{name}: hidden_states.{i}");
            let d = max_abs_diff(h, want).unwrap();
            assert!(d < 1e-4, "{name}: hidden_states.{i} differs by {d}");
        }
    }
}

#[test]
fn siglip_reads_without_a_class_token_and_floors_its_patch_grid() {
    let checkpoint = read_vision_config(&fixture("siglip-vision")).unwrap();
    let Some(cfg) = checkpoint.config.downcast_ref::<VitConfig>() else {
        panic!("SigLIP reads as a vision transformer");
    };
    // 30-pixel images, 8-pixel patches: a 3×3 grid, the last 6 pixels unused.
    assert_eq!((cfg.image_size, cfg.patch_size, cfg.grid()), (30, 8, 3));
    let info = checkpoint.config.info();
    assert!(!info.has_cls);
    assert_eq!(cfg.image_mean, [0.5; 3]);
}

/// A copy of fixture `name` in a temporary directory, with its weights and its
/// config changed by `edit`.
fn altered(
    name: &str,
    edit: impl FnOnce(&mut HashMap<String, Tensor>, &mut serde_json::Value),
) -> tempfile::TempDir {
    let src = fixture(name);
    let dir = tempfile::tempdir().unwrap();
    let mut weights =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut weights, &mut config);
    candle_core::safetensors::save(&weights, dir.path().join("model.safetensors")).unwrap();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

/// The error `load` gives for `dir`, which must not load.
fn refused<T>(dir: &Path, load: fn(&Path, &Device) -> Result<T, HfError>) -> String {
    match load(dir, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn refusal(dir: &Path) -> String {
    refused(dir, load_language_model)
}

fn vision_refusal(dir: &Path) -> String {
    refused(dir, load_vision_model)
}

#[test]
fn an_inexact_vision_checkpoint_is_refused_with_what_is_wrong() {
    let missing = altered("siglip-vision", |w, _| {
        w.remove("vision_model.embeddings.patch_embedding.bias");
    });
    let msg = vision_refusal(missing.path());
    assert!(
        msg.contains("vision_model.embeddings.patch_embedding.bias") && msg.contains("missing"),
        "{msg}"
    );
    // A CLIP class token in a SigLIP checkpoint is a weight the model lacks.
    let extra = altered("siglip-vision", |w, _| {
        w.insert(
            "vision_model.embeddings.class_embedding".into(),
            Tensor::zeros(32, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let msg = vision_refusal(extra.path());
    assert!(
        msg.contains("1 weight the model does not have: `vision_model.embeddings.class_embedding`"),
        "{msg}"
    );
    let dropout = altered("clip-vision", |_, c| {
        c["attention_dropout"] = serde_json::json!(0.1);
    });
    let msg = vision_refusal(dropout.path());
    assert!(
        msg.contains("`attention_dropout`") && msg.contains("without dropout"),
        "{msg}"
    );
    let nested = altered("clip-full", |_, c| {
        c["vision_config"]["hidden_act"] = serde_json::json!("swish_gate");
    });
    let msg = vision_refusal(nested.path());
    assert!(msg.contains("`vision_config.hidden_act`"), "{msg}");
    let language = altered("llama-gqa-rope", |_, _| {});
    let msg = vision_refusal(language.path());
    assert!(msg.contains("`llama` is not a vision encoder"), "{msg}");
    // transformers 5 saves vision models without the `vision_model.` prefix.
    let unprefixed = altered("clip-vision", |w, _| {
        *w = w
            .drain()
            .map(|(k, v)| (k.trim_start_matches("vision_model.").to_string(), v))
            .collect();
    });
    load_vision_model(unprefixed.path(), &Device::Cpu).unwrap();
}

#[test]
fn an_inexact_checkpoint_is_refused_with_what_is_wrong() {
    let missing = altered("llama-gqa-rope", |w, _| {
        w.remove("model.layers.1.mlp.up_proj.weight");
    });
    let msg = refusal(missing.path());
    assert!(
        msg.contains("model.layers.1.mlp.up_proj.weight") && msg.contains("missing"),
        "{msg}"
    );

    let extra = altered("llama-gqa-rope", |w, _| {
        w.insert(
            "model.layers.0.mlp.up_proj.bias".into(),
            Tensor::zeros(48, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let msg = refusal(extra.path());
    assert!(
        msg.contains("1 weight the model does not have: `model.layers.0.mlp.up_proj.bias`"),
        "{msg}"
    );

    let reshaped = altered("llama-gqa-rope", |w, _| {
        w.insert(
            "model.norm.weight".into(),
            Tensor::ones(31, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let msg = refusal(reshaped.path());
    assert!(
        msg.contains("model.norm.weight") && msg.contains("[31]") && msg.contains("[32]"),
        "{msg}"
    );

    let scaled = altered("llama-gqa-rope", |_, c| {
        c["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0});
    });
    let msg = refusal(scaled.path());
    assert!(
        msg.contains("`rope_scaling`") && msg.contains("llama3"),
        "{msg}"
    );

    let unknown = altered("qwen2-bias-tied", |_, c| {
        c["partial_rotary_factor"] = serde_json::json!(0.5);
    });
    let msg = refusal(unknown.path());
    assert!(msg.contains("unknown key `partial_rotary_factor`"), "{msg}");

    let vision = altered("qwen2-bias-tied", |_, c| {
        c["model_type"] = serde_json::json!("clip_vision_model");
    });
    let msg = refusal(vision.path());
    assert!(msg.contains("not a language model"), "{msg}");

    // A tied checkpoint that also carries a different lm_head is not silently tied.
    let untied = altered("qwen2-bias-tied", |w, _| {
        let e = w["model.embed_tokens.weight"].affine(2.0, 0.0).unwrap();
        w.insert("lm_head.weight".into(), e);
    });
    let msg = refusal(untied.path());
    assert!(msg.contains("`lm_head.weight` differs"), "{msg}");
}

#[test]
fn transformers_5_rope_parameters_and_a_sliding_window_are_read() {
    let dir = altered("mistral-gqa", |_, c| {
        let theta = c["rope_theta"].clone();
        c.as_object_mut().unwrap().remove("rope_theta");
        c["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": theta});
        c["sliding_window"] = serde_json::json!(6);
    });
    let checkpoint = read_language_config(dir.path()).unwrap();
    assert_eq!(checkpoint.config.rope_theta, 1e6);
    assert_eq!(checkpoint.config.sliding_window, Some(6));
    // Eight tokens do not fit a window of six, which vlmkit does not implement.
    let (_, model) = load_language_model(dir.path(), &Device::Cpu).unwrap();
    let ids = Tensor::zeros((1, 8), DType::U32, &Device::Cpu).unwrap();
    let err = hidden_states(&model, &ids, None).err().expect("refused");
    assert!(err.to_string().contains("sliding window of 6"), "{err}");
    assert!(matches!(
        read_language_config(&fixture("nonexistent")),
        Err(HfError::Hub(_))
    ));
}
