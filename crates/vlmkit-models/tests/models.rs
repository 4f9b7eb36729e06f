//! Models against finite differences, and the properties generation relies on.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use vlmkit_core::gradcheck::{check_store_gradients, max_abs_diff, random_projection, GradCheck};
use vlmkit_core::ops::{self, Activation};
use vlmkit_core::params::{Missing, ParamStore};
use vlmkit_core::{DecoderHooks, DecoderInput, KvCache, LanguageModel, VisionEncoder};
use vlmkit_models::{Llama, LlamaConfig, PositionInit, VisionTransformer, VitConfig};

fn tiny_vit() -> VitConfig {
    VitConfig {
        hidden_size: 8,
        intermediate_size: 12,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        image_size: 8,
        patch_size: 4,
        hidden_act: Activation::Gelu,
        ..VitConfig::default()
    }
}

fn tiny_llama() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 11,
        hidden_size: 8,
        intermediate_size: 12,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        max_position_embeddings: 32,
        rope_theta: 100.0,
        tie_word_embeddings: true,
        initializer_range: 0.5,
        ..LlamaConfig::default()
    }
}

fn gradcheck_all(store: &ParamStore, loss: impl Fn() -> candle_core::Result<Tensor>) {
    check_store_gradients(
        store,
        loss,
        &GradCheck {
            max_elems: 6,
            ..GradCheck::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn vit_gradients_match_finite_differences() {
    let store = ParamStore::new(Device::Cpu, DType::F64);
    let vit = VisionTransformer::new(&tiny_vit(), store.init_builder(1)).unwrap();
    let pixels = Tensor::randn(0f64, 1.0, (2, 3, 8, 8), &Device::Cpu).unwrap();
    // Read every hidden state so that every block matters.
    gradcheck_all(&store, || {
        let f = vit.forward(&pixels, &[0, 1, 2])?;
        let cls = Tensor::stack(f.cls.as_ref().unwrap(), 1)?;
        random_projection(&f.layers[2], 1)?
            + random_projection(&f.layers[1], 2)?
            + random_projection(&cls, 3)?
    });
}

#[test]
fn siglip_gradients_match_finite_differences() {
    // SigLIP's layout (patch bias, no class token, no pre-norm) on an image side the
    // patch does not divide: the last pixels get no gradient, every weight does.
    let cfg = VitConfig {
        image_size: 10,
        ..VitConfig {
            family: vlmkit_models::VitFamily::Siglip,
            ..tiny_vit()
        }
    };
    let store = ParamStore::new(Device::Cpu, DType::F64);
    let vit = VisionTransformer::new(&cfg, store.init_builder(1)).unwrap();
    assert!(vit.info().grids.iter().all(|&g| g == (2, 2)));
    let pixels = Tensor::randn(0f64, 1.0, (2, 3, 10, 10), &Device::Cpu).unwrap();
    let names: Vec<String> = store.vars().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"vision_model.embeddings.patch_embedding.bias".to_string()));
    assert!(!names
        .iter()
        .any(|n| n.contains("class_embedding") || n.contains("pre_layrnorm")));
    gradcheck_all(&store, || {
        let f = vit.forward(&pixels, &[0, 1, 2])?;
        assert!(f.cls.is_none());
        assert_eq!(f.layers[0].dims(), [2, 4, 8]);
        random_projection(&f.layers[2], 1)? + random_projection(&f.layers[1], 2)?
    });
}

#[test]
fn vit_hidden_states_follow_hf_indexing() {
    let store = ParamStore::new(Device::Cpu, DType::F32);
    let cfg = tiny_vit();
    let vit = VisionTransformer::new(&cfg, store.init_builder(2)).unwrap();
    let pixels = Tensor::randn(0f32, 1.0, (1, 3, 8, 8), &Device::Cpu).unwrap();
    let all = vit.forward(&pixels, &[0, 1, 2]).unwrap();
    assert_eq!(all.layers[0].dims(), &[1, 4, 8]);
    assert_eq!(all.grid, (2, 2));
    // Asking for hs[1] alone runs one block and gives the same tensor.
    let one = vit.forward(&pixels, &[1]).unwrap();
    assert!(max_abs_diff(&one.layers[0], &all.layers[1]).unwrap() == 0.0);
    // Blocks past the deepest requested layer, and the pooled-output norm, are unused.
    assert_eq!(
        vit.unused_params(&[1]),
        [
            "vision_model.encoder.layers.1.",
            "vision_model.post_layernorm."
        ]
    );
    let names: Vec<String> = store.vars().into_iter().map(|(n, _)| n).collect();
    for expected in [
        "vision_model.embeddings.patch_embedding.weight",
        "vision_model.embeddings.class_embedding",
        "vision_model.embeddings.position_embedding.weight",
        "vision_model.pre_layrnorm.weight",
        "vision_model.encoder.layers.0.self_attn.q_proj.bias",
        "vision_model.encoder.layers.1.self_attn.out_proj.weight",
        "vision_model.encoder.layers.0.mlp.fc1.weight",
        "vision_model.encoder.layers.0.layer_norm2.bias",
        "vision_model.post_layernorm.weight",
    ] {
        assert!(names.iter().any(|n| n == expected), "missing {expected}");
    }
}

#[test]
fn sincos_position_init_encodes_rows_and_columns_and_spares_loaded_weights() {
    let cfg = VitConfig {
        position_embedding_init: PositionInit::Sincos2d,
        image_size: 12,
        patch_size: 4,
        ..tiny_vit()
    };
    let name = "vision_model.embeddings.position_embedding.weight";
    let initial = cfg.initial_values().unwrap();
    assert_eq!(initial.len(), 1);
    assert_eq!(initial[0].0, name);
    let store = ParamStore::new(Device::Cpu, DType::F32);
    store.set_initial_values(initial);
    VisionTransformer::new(&cfg, store.init_builder(3)).unwrap();
    let table: Vec<Vec<f32>> = store.get(name).unwrap().as_tensor().to_vec2().unwrap();
    assert_eq!((table.len(), table[0].len()), (10, 8));
    assert!(
        table[0].iter().all(|&v| v == 0.0),
        "class token starts at zero"
    );
    // Cell (row r, column c) is entry 1 + 3r + c: the first half of the channels
    // depends on the row only, the second half on the column only.
    let cell = |r: usize, c: usize| &table[1 + 3 * r + c];
    assert_eq!(cell(1, 0)[..4], cell(1, 2)[..4]);
    assert_eq!(cell(0, 2)[4..], cell(2, 2)[4..]);
    assert_ne!(cell(0, 0)[..4], cell(1, 0)[..4]);
    assert_ne!(cell(0, 0)[4..], cell(0, 1)[4..]);
    // sin then cos of position × frequency 1 in each half.
    assert!((cell(2, 1)[0] - 2f32.sin()).abs() < 1e-6);
    assert!((cell(2, 1)[6] - 1f32.cos()).abs() < 1e-6);

    // A parameter the store already holds (a checkpoint) keeps its value.
    let loaded = Tensor::full(0.5f32, (10, 8), &Device::Cpu).unwrap();
    let store = ParamStore::new(Device::Cpu, DType::F32);
    store
        .insert_tensors([(name.to_owned(), loaded.clone())])
        .unwrap();
    store.set_initial_values(cfg.initial_values().unwrap());
    VisionTransformer::new(&cfg, store.init_builder(3)).unwrap();
    let kept = store.get(name).unwrap().as_tensor().clone();
    assert_eq!(max_abs_diff(&kept, &loaded).unwrap(), 0.0);

    // A table of the wrong shape is refused with both shapes.
    let store = ParamStore::new(Device::Cpu, DType::F32);
    store.set_initial_values(tiny_vit_sincos_table_of_other_grid());
    let err = VisionTransformer::new(&cfg, store.init_builder(3))
        .unwrap_err()
        .to_string();
    assert!(err.contains("[5, 8]") && err.contains("[10, 8]"), "{err}");

    let odd = VitConfig {
        hidden_size: 6,
        num_attention_heads: 2,
        ..cfg
    };
    assert_eq!(odd.validate().unwrap_err().0, "position_embedding_init");
}

/// The sincos table of `tiny_vit` (a 2×2 grid) — wrong for a 3×3 grid.
fn tiny_vit_sincos_table_of_other_grid() -> Vec<(String, Tensor)> {
    VitConfig {
        position_embedding_init: PositionInit::Sincos2d,
        ..tiny_vit()
    }
    .initial_values()
    .unwrap()
}

#[test]
fn patch_unfold_matches_candle_conv2d() {
    // The patch embedding is a stride-p convolution; the unfold + linear used here
    // must give the same tokens.
    let store = ParamStore::new(Device::Cpu, DType::F64);
    let cfg = tiny_vit();
    let vit = VisionTransformer::new(&cfg, store.init_builder(3)).unwrap();
    let pixels = Tensor::randn(0f64, 1.0, (2, 3, 8, 8), &Device::Cpu).unwrap();
    let hs0 = vit.forward(&pixels, &[0]).unwrap();
    let w = store
        .get("vision_model.embeddings.patch_embedding.weight")
        .unwrap();
    let conv = pixels.conv2d(w.as_tensor(), 0, 4, 1, 1).unwrap(); // (2, 8, 2, 2)
    let tokens = conv.flatten_from(2).unwrap().transpose(1, 2).unwrap(); // (2, 4, 8)
    let cls = store
        .get("vision_model.embeddings.class_embedding")
        .unwrap();
    let pos = store
        .get("vision_model.embeddings.position_embedding.weight")
        .unwrap();
    let x = Tensor::cat(
        &[
            &cls.as_tensor()
                .reshape((1, 1, 8))
                .unwrap()
                .broadcast_as((2, 1, 8))
                .unwrap(),
            &tokens,
        ],
        1,
    )
    .unwrap()
    .broadcast_add(&pos.as_tensor().unsqueeze(0).unwrap())
    .unwrap();
    let g = store.get("vision_model.pre_layrnorm.weight").unwrap();
    let b = store.get("vision_model.pre_layrnorm.bias").unwrap();
    let expected = ops::layer_norm(&x, g.as_tensor(), b.as_tensor(), 1e-5)
        .unwrap()
        .narrow(1, 1, 4)
        .unwrap();
    let d = max_abs_diff(&hs0.layers[0], &expected).unwrap();
    assert!(d < 1e-10);
}

fn decoder_input(b: usize, t: usize, valid: &[Vec<bool>]) -> DecoderInput {
    let positions: Vec<u32> = (0..b).flat_map(|_| 0..t as u32).collect();
    DecoderInput {
        positions: Tensor::from_vec(positions, (b, t), &Device::Cpu).unwrap(),
        mask: ops::causal_mask(valid, 0, t, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap(),
    }
}

#[test]
fn llama_gradients_match_finite_differences() {
    let store = ParamStore::new(Device::Cpu, DType::F64);
    let llm = Llama::new(&tiny_llama(), store.init_builder(4)).unwrap();
    let ids = Tensor::new(&[[1u32, 4, 2, 7, 3], [5, 5, 0, 9, 10]], &Device::Cpu).unwrap();
    let valid = vec![vec![true; 5], vec![true, true, true, true, false]];
    let input = decoder_input(2, 5, &valid);
    gradcheck_all(&store, || {
        let h = llm.forward(&llm.embed_tokens(&ids)?, &input, None, None)?;
        let logits = llm.logits(&h)?.reshape((10, 11))?;
        ops::cross_entropy(&logits, &[4, 2, 7, 3, -100, 5, 0, 9, -100, -100])
    });
}

#[test]
fn untied_head_and_qkv_bias_get_gradients() {
    let cfg = LlamaConfig {
        tie_word_embeddings: false,
        qkv_bias: true,
        ..tiny_llama()
    };
    let store = ParamStore::new(Device::Cpu, DType::F64);
    let llm = Llama::new(&cfg, store.init_builder(5)).unwrap();
    assert!(store.get("lm_head.weight").is_some());
    assert!(store.get("model.layers.0.self_attn.q_proj.bias").is_some());
    assert!(store.get("model.layers.0.self_attn.o_proj.bias").is_none());
    let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
    let input = decoder_input(1, 3, &[vec![true; 3]]);
    gradcheck_all(&store, || {
        let h = llm.forward(&llm.embed_tokens(&ids)?, &input, None, None)?;
        random_projection(&llm.logits(&h)?, 7)
    });
}

#[test]
fn kv_cache_decoding_matches_full_forward() {
    let store = ParamStore::new(Device::Cpu, DType::F64);
    let llm = Llama::new(&tiny_llama(), store.init_builder(6)).unwrap();
    let ids = Tensor::new(&[[1u32, 4, 2, 7, 3, 9]], &Device::Cpu).unwrap();
    let full = llm
        .forward(
            &llm.embed_tokens(&ids).unwrap(),
            &decoder_input(1, 6, &[vec![true; 6]]),
            None,
            None,
        )
        .unwrap();
    // Prefill 4 tokens, then decode 2 one at a time.
    let mut cache = KvCache::new(2);
    let prefix = ids.narrow(1, 0, 4).unwrap();
    let mut outs = vec![llm
        .forward(
            &llm.embed_tokens(&prefix).unwrap(),
            &decoder_input(1, 4, &[vec![true; 4]]),
            Some(&mut cache),
            None,
        )
        .unwrap()];
    for p in 4..6 {
        let tok = ids.narrow(1, p, 1).unwrap();
        let input = DecoderInput {
            positions: Tensor::new(&[[p as u32]], &Device::Cpu).unwrap(),
            mask: ops::causal_mask(&[vec![true; p + 1]], p, 1, &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap(),
        };
        outs.push(
            llm.forward(
                &llm.embed_tokens(&tok).unwrap(),
                &input,
                Some(&mut cache),
                None,
            )
            .unwrap(),
        );
    }
    assert_eq!(cache.len(), 6);
    let stepwise = Tensor::cat(&outs, 1).unwrap();
    let d = max_abs_diff(&full, &stepwise).unwrap();
    assert!(d < 1e-10);
}

#[test]
fn padding_does_not_change_real_positions() {
    // Right padding with a key mask leaves the real tokens' states unchanged.
    let store = ParamStore::new(Device::Cpu, DType::F64);
    let llm = Llama::new(&tiny_llama(), store.init_builder(7)).unwrap();
    let short = Tensor::new(&[[1u32, 4, 2]], &Device::Cpu).unwrap();
    let padded = Tensor::new(&[[1u32, 4, 2, 0, 0]], &Device::Cpu).unwrap();
    let a = llm
        .forward(
            &llm.embed_tokens(&short).unwrap(),
            &decoder_input(1, 3, &[vec![true; 3]]),
            None,
            None,
        )
        .unwrap();
    let valid = vec![vec![true, true, true, false, false]];
    let b = llm
        .forward(
            &llm.embed_tokens(&padded).unwrap(),
            &decoder_input(1, 5, &valid),
            None,
            None,
        )
        .unwrap()
        .narrow(1, 0, 3)
        .unwrap();
    let d = max_abs_diff(&a, &b).unwrap();
    assert!(d < 1e-12);
}

struct AddOne;
impl DecoderHooks for AddOne {
    fn before_layer(&self, layer: usize, hidden: &Tensor) -> candle_core::Result<Tensor> {
        if layer == 1 {
            hidden + 1.0
        } else {
            Ok(hidden.clone())
        }
    }
}

#[test]
fn hooks_run_between_decoder_layers() {
    let store = ParamStore::new(Device::Cpu, DType::F64);
    let llm = Llama::new(&tiny_llama(), store.init_builder(8)).unwrap();
    let ids = Tensor::new(&[[1u32, 4, 2]], &Device::Cpu).unwrap();
    let input = decoder_input(1, 3, &[vec![true; 3]]);
    let plain = llm
        .forward(&llm.embed_tokens(&ids).unwrap(), &input, None, None)
        .unwrap();
    let hooked = llm
        .forward(
            &llm.embed_tokens(&ids).unwrap(),
            &input,
            None,
            Some(&AddOne),
        )
        .unwrap();
    let d = max_abs_diff(&plain, &hooked).unwrap();
    assert!(d > 1e-3);
}

#[test]
fn frozen_decoder_passes_gradients_to_its_input_without_weight_gradients() {
    let store = ParamStore::new(Device::Cpu, DType::F32);
    let frozen = store.builder(Missing::Initialize { seed: 9 }, Arc::new(|_| false));
    let llm = Llama::new(&tiny_llama(), frozen).unwrap();
    let x = Var::randn(0f32, 1.0, (1, 3, 8), &Device::Cpu).unwrap();
    let input = DecoderInput {
        positions: Tensor::new(&[[0u32, 1, 2]], &Device::Cpu).unwrap(),
        mask: ops::causal_mask(&[vec![true; 3]], 0, 3, &Device::Cpu).unwrap(),
    };
    let h = llm.forward(x.as_tensor(), &input, None, None).unwrap();
    let grads = h.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(x.as_tensor()).is_some());
    for (name, var) in store.vars() {
        assert!(
            grads.get(var.as_tensor()).is_none(),
            "frozen {name} got a gradient"
        );
    }
    // No gradient was computed for any frozen weight either (candle's own matmul
    // would have filled the store with one per weight): only the input's remains.
    assert_eq!(
        grads.get_ids().count(),
        1,
        "gradients were computed for frozen tensors"
    );
}
