//! Hugging Face checkpoints against transformers: tiny randomly initialised models
//! made by `scripts/make-parity-fixtures.py` (tests/fixtures/hf/), whose every
//! hidden state and logits vlmkit must reproduce to 1e-4; and the refusals that
//! keep a checkpoint from loading approximately.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use vlmkit_core::gradcheck::max_abs_diff;
use vlmkit_models::hf::{hidden_states, load_language_model, read_language_config, HfError};

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

fn refusal(dir: &Path) -> String {
    match load_language_model(dir, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
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
