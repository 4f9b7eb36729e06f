//! ConvNeXt against candle's convolutions, HF's names and shapes, and finite
//! differences.

use candle_core::{DType, Device};
use vlmkit_core::gradcheck::{
    check_every_param_learns, check_store_gradients, max_abs_diff, randn, random_projection,
    GradCheck,
};
use vlmkit_core::params::{ParamStore, ShapeRecorder};

use super::*;

/// 32-pixel images, a 2-pixel stem and three stages: grids 16, 8, 4.
fn tiny() -> ConvNextConfig {
    ConvNextConfig {
        patch_size: 2,
        num_stages: 3,
        hidden_sizes: vec![4, 6, 8],
        depths: vec![1, 2, 1],
        image_size: 32,
        // Blocks that matter at initialisation, so finite differences see them.
        layer_scale_init_value: 0.5,
        initializer_range: 0.3,
        ..ConvNextConfig::default()
    }
}

#[test]
fn depthwise_convolution_matches_candles_grouped_convolution() {
    let (b, h, w, c) = (2, 6, 6, 3);
    let x = randn(&[b, h, w, c], 1.0, 1).unwrap();
    let weight = randn(&[c, 1, KERNEL, KERNEL], 1.0, 2).unwrap();
    let bias = randn(&[c], 1.0, 3).unwrap();
    let ours = depthwise_conv(&x, &weight, &bias).unwrap();
    let reference = x
        .permute((0, 3, 1, 2))
        .unwrap()
        .contiguous()
        .unwrap()
        .conv2d(&weight, KERNEL / 2, 1, 1, c)
        .unwrap()
        .broadcast_add(&bias.reshape((1, c, 1, 1)).unwrap())
        .unwrap()
        .permute((0, 2, 3, 1))
        .unwrap();
    assert!(max_abs_diff(&ours, &reference).unwrap() < 1e-12);
}

#[test]
fn patchify_convolution_matches_candles_strided_convolution() {
    let (b, h, w, c, out, k) = (2, 8, 8, 3, 5, 2);
    let x = randn(&[b, h, w, c], 1.0, 4).unwrap();
    let weight = randn(&[out, c, k, k], 1.0, 5).unwrap();
    let bias = randn(&[out], 1.0, 6).unwrap();
    let ours = nn::patch_conv(&x, &weight, Some(&bias), k).unwrap();
    let reference = x
        .permute((0, 3, 1, 2))
        .unwrap()
        .contiguous()
        .unwrap()
        .conv2d(&weight, 0, k, 1, 1)
        .unwrap()
        .broadcast_add(&bias.reshape((1, out, 1, 1)).unwrap())
        .unwrap()
        .permute((0, 2, 3, 1))
        .unwrap();
    assert!(max_abs_diff(&ours, &reference).unwrap() < 1e-12);
}

#[test]
fn hidden_states_are_the_stem_and_each_stage() {
    let cfg = tiny();
    let info = cfg.info();
    assert_eq!(info.depth, 3);
    assert_eq!(info.widths, vec![4, 4, 6, 8]);
    assert_eq!(info.grids, vec![(16, 16), (16, 16), (8, 8), (4, 4)]);
    assert!(!info.has_cls);

    let store = ParamStore::new(Device::Cpu, DType::F64);
    let model = ConvNext::new(&cfg, store.init_builder(1)).unwrap();
    let pixels = randn(&[2, 3, 32, 32], 1.0, 7).unwrap();
    let out = model.forward(&pixels, &[3, 0, 2]).unwrap();
    let dims: Vec<Vec<usize>> = out.layers.iter().map(|t| t.dims().to_vec()).collect();
    assert_eq!(dims, vec![vec![2, 16, 8], vec![2, 256, 4], vec![2, 64, 6]]);
    assert!(out.cls.is_none());
    assert_eq!(out.grid, (4, 4));
    // Stages past the deepest requested one are not run, and say so.
    assert_eq!(
        model.unused_params(&[1]),
        vec!["encoder.stages.1.", "encoder.stages.2.", "layernorm."]
    );
    let err = model.forward(&pixels, &[4]).err().unwrap().to_string();
    assert!(err.contains("hs[4]") && err.contains("3 stages"), "{err}");
}

#[test]
fn weights_have_hugging_face_names_and_shapes() {
    let recorder = ShapeRecorder::new();
    ConvNext::new(&ConvNextConfig::default(), recorder.builder()).unwrap();
    let shapes = recorder.shapes();
    let expect = [
        ("embeddings.patch_embeddings.weight", vec![96, 3, 4, 4]),
        ("embeddings.patch_embeddings.bias", vec![96]),
        ("embeddings.layernorm.weight", vec![96]),
        ("encoder.stages.0.layers.0.dwconv.weight", vec![96, 1, 7, 7]),
        ("encoder.stages.0.layers.0.layernorm.bias", vec![96]),
        ("encoder.stages.0.layers.0.pwconv1.weight", vec![384, 96]),
        ("encoder.stages.0.layers.0.pwconv2.weight", vec![96, 384]),
        ("encoder.stages.0.layers.0.layer_scale_parameter", vec![96]),
        ("encoder.stages.1.downsampling_layer.0.weight", vec![96]),
        (
            "encoder.stages.1.downsampling_layer.1.weight",
            vec![192, 96, 2, 2],
        ),
        ("encoder.stages.2.layers.8.pwconv1.bias", vec![1536]),
        ("encoder.stages.3.layers.2.dwconv.bias", vec![768]),
        ("layernorm.weight", vec![768]),
    ];
    for (name, shape) in expect {
        assert_eq!(shapes.get(name), Some(&shape), "{name}");
    }
    assert!(!shapes
        .keys()
        .any(|n| n.starts_with("encoder.stages.0.downsampling")));
    // ConvNeXt-T: 27,820,128 parameters in HF's ConvNextModel.
    let total: usize = shapes.values().map(|s| s.iter().product::<usize>()).sum();
    assert_eq!(total, 27_820_128);
}

#[test]
fn gradients_match_finite_differences_and_reach_every_parameter() {
    let cfg = tiny();
    let store = ParamStore::new(Device::Cpu, DType::F64);
    let model = ConvNext::new(&cfg, store.init_builder(2)).unwrap();
    let pixels = randn(&[2, 3, 32, 32], 1.0, 8).unwrap();
    let loss = || {
        let out = model.forward(&pixels, &[1, 3])?;
        random_projection(&out.layers[0], 1)? + random_projection(&out.layers[1], 2)?
    };
    let check = GradCheck {
        max_elems: 3,
        ..GradCheck::default()
    };
    check_store_gradients(&store, loss, &check).unwrap();
    // The final LayerNorm serves only the pooled output.
    check_every_param_learns(&store, loss, &["layernorm.weight", "layernorm.bias"]).unwrap();
}

#[test]
fn sizes_that_do_not_fit_are_refused_with_the_setting() {
    let bad = ConvNextConfig {
        depths: vec![1, 1],
        ..tiny()
    };
    assert_eq!(bad.validate().unwrap_err().0, "depths");
    let bad = ConvNextConfig {
        image_size: 20,
        ..tiny()
    };
    let (key, message) = bad.validate().unwrap_err();
    assert_eq!(key, "image_size");
    assert!(message.contains("halved 2 times"), "{message}");
    let bad = ConvNextConfig {
        drop_path_rate: 0.1,
        ..tiny()
    };
    assert_eq!(bad.validate().unwrap_err().0, "drop_path_rate");
}
