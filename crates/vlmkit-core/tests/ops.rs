//! Every op against finite differences (f64) and against its reference composition
//! (forward and backward), plus the edge cases training relies on.

use candle_core::{DType, Device, Result, Tensor, Var};
use vlmkit_core::gradcheck::{
    check_gradients, max_abs_diff, randn_var, random_projection, GradCheck,
};
use vlmkit_core::ops::{self, Activation};

fn check(vars: &[(&str, &Var)], f: impl Fn() -> Result<Tensor>) {
    let report = check_gradients(vars, || random_projection(&f()?, 99), &GradCheck::default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.checked > 0);
}

/// Fused op and reference agree on value and on the gradient of every input.
fn agree(
    vars: &[&Var],
    fused: impl Fn() -> Result<Tensor>,
    reference: impl Fn() -> Result<Tensor>,
) {
    agree_within(vars, fused, reference, 1e-9)
}

fn agree_within(
    vars: &[&Var],
    fused: impl Fn() -> Result<Tensor>,
    reference: impl Fn() -> Result<Tensor>,
    tolerance: f64,
) {
    let a = fused().unwrap();
    let b = reference().unwrap();
    assert_eq!(a.dims(), b.dims());
    let diff = max_abs_diff(&a, &b).unwrap();
    assert!(diff < tolerance, "forward differs by {diff}");
    let ga = random_projection(&a, 5).unwrap().backward().unwrap();
    let gb = random_projection(&b, 5).unwrap().backward().unwrap();
    for (i, v) in vars.iter().enumerate() {
        let x = ga
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("fused: input {i} got no gradient"));
        let y = gb
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("reference: input {i} got no gradient"));
        let d = max_abs_diff(x, y).unwrap();
        assert!(d < tolerance, "gradient of input {i} differs by {d}");
    }
}

#[test]
fn softmax_gradients() {
    let x = randn_var(&[3, 4, 7], 2.0, 1).unwrap();
    check(&[("x", &x)], || ops::softmax_last_dim(x.as_tensor()));
    agree(
        &[&x],
        || ops::softmax_last_dim(x.as_tensor()),
        || ops::softmax::reference::softmax_last_dim(x.as_tensor()),
    );
}

#[test]
fn log_softmax_gradients() {
    let x = randn_var(&[5, 9], 3.0, 2).unwrap();
    check(&[("x", &x)], || ops::log_softmax_last_dim(x.as_tensor()));
    agree(
        &[&x],
        || ops::log_softmax_last_dim(x.as_tensor()),
        || ops::softmax::reference::log_softmax_last_dim(x.as_tensor()),
    );
}

fn causal(b: usize, t: usize) -> Tensor {
    // Sample 1 has its last two keys padded.
    let valid: Vec<Vec<bool>> = (0..b)
        .map(|bi| (0..t).map(|k| !(bi == 1 && k >= t - 2)).collect())
        .collect();
    ops::causal_mask(&valid, 0, t, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
}

#[test]
fn masked_softmax_gradients() {
    let x = randn_var(&[2, 3, 5, 5], 1.5, 3).unwrap();
    let mask = causal(2, 5);
    check(&[("x", &x)], || {
        ops::masked_softmax(x.as_tensor(), Some(&mask), 0.37)
    });
    agree(
        &[&x],
        || ops::masked_softmax(x.as_tensor(), Some(&mask), 0.37),
        || ops::softmax::reference::masked_softmax(x.as_tensor(), &mask, 0.37),
    );
    // Shared mask (1×T×S) too.
    let shared = causal(1, 5);
    check(&[("x", &x)], || {
        ops::masked_softmax(x.as_tensor(), Some(&shared), 1.0)
    });
}

#[test]
fn fully_masked_rows_give_zeros_not_nan() {
    let x = Tensor::ones((1, 1, 2, 3), DType::F32, &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[[0f32, 0., 0.], [f32::NEG_INFINITY; 3]]], &Device::Cpu).unwrap();
    let y = ops::masked_softmax(&x, Some(&mask), 1.0).unwrap();
    let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(&v[3..], &[0.0, 0.0, 0.0]);
    assert!((v[0] - 1.0 / 3.0).abs() < 1e-6);
}

/// LayerNorm of an `x_shape` input (std `x_std`) with a `width`-channel affine: the fused op
/// agrees with the reference composition (values and gradients) and, when
/// `finite_differences`, its gradients match central differences.
fn layer_norm_case(
    x_shape: &[usize],
    x_std: f64,
    width: usize,
    seed: u64,
    finite_differences: bool,
) {
    let x = randn_var(x_shape, x_std, seed).unwrap();
    let g = randn_var(&[width], 1.0, seed + 1).unwrap();
    let b = randn_var(&[width], 1.0, seed + 2).unwrap();
    let fused = || ops::layer_norm(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5);
    if finite_differences {
        check(&[("x", &x), ("gamma", &g), ("beta", &b)], fused);
    }
    agree(&[&x, &g, &b], fused, || {
        ops::norm::reference::layer_norm(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5)
    });
}

#[test]
fn layer_norm_gradients() {
    layer_norm_case(&[4, 3, 8], 2.0, 8, 4, true);
}

#[test]
fn layer_norm_with_periodic_affine_gradients() {
    // Normalise over 3 patches × 4 channels with a per-channel affine.
    layer_norm_case(&[2, 12], 1.0, 4, 7, true);
}

#[test]
fn layer_norm_many_rows_uses_blocked_reduction() {
    // More rows than one block, large enough for the parallel path.
    layer_norm_case(&[600, 64], 1.0, 64, 10, false);
}

#[test]
fn rms_norm_gradients() {
    let x = randn_var(&[3, 5, 6], 2.0, 13).unwrap();
    let g = randn_var(&[6], 1.0, 14).unwrap();
    check(&[("x", &x), ("gamma", &g)], || {
        ops::rms_norm(x.as_tensor(), g.as_tensor(), 1e-6)
    });
    agree(
        &[&x, &g],
        || ops::rms_norm(x.as_tensor(), g.as_tensor(), 1e-6),
        || ops::norm::reference::rms_norm(x.as_tensor(), g.as_tensor(), 1e-6),
    );
}

#[test]
fn rope_gradients_shared_and_batched_tables() {
    let x = randn_var(&[2, 5, 3, 8], 1.0, 15).unwrap();
    let pos = Tensor::new(&[0u32, 1, 2, 3, 4], &Device::Cpu).unwrap();
    let (cos, sin) = ops::rope_tables(&pos, 8, 10000.0, DType::F64).unwrap();
    check(&[("x", &x)], || ops::rope(x.as_tensor(), &cos, &sin));
    agree(
        &[&x],
        || ops::rope(x.as_tensor(), &cos, &sin),
        || ops::rope::reference::rope(x.as_tensor(), &cos, &sin),
    );
    let pos_b = Tensor::new(&[[0u32, 0, 1, 2, 3], [0, 1, 2, 3, 4]], &Device::Cpu).unwrap();
    let (cos, sin) = ops::rope_tables(&pos_b, 8, 500.0, DType::F64).unwrap();
    check(&[("x", &x)], || ops::rope(x.as_tensor(), &cos, &sin));
    agree(
        &[&x],
        || ops::rope(x.as_tensor(), &cos, &sin),
        || ops::rope::reference::rope(x.as_tensor(), &cos, &sin),
    );
}

#[test]
fn rope_preserves_norm_and_relative_positions() {
    // Rotations keep lengths; q·k depends only on the position difference.
    let q = randn_var(&[1, 1, 1, 8], 1.0, 16).unwrap();
    let k = randn_var(&[1, 1, 1, 8], 1.0, 17).unwrap();
    let dot_at = |pq: u32, pk: u32| -> f64 {
        let t = |p: u32| {
            ops::rope_tables(
                &Tensor::new(&[p], &Device::Cpu).unwrap(),
                8,
                10000.0,
                DType::F64,
            )
            .unwrap()
        };
        let (cq, sq) = t(pq);
        let (ck, sk) = t(pk);
        let a = ops::rope(q.as_tensor(), &cq, &sq).unwrap();
        let b = ops::rope(k.as_tensor(), &ck, &sk).unwrap();
        (a * b)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    // Angles are computed in f32, as Hugging Face does.
    assert!((dot_at(3, 1) - dot_at(7, 5)).abs() < 1e-5);
}

#[test]
fn activation_gradients() {
    for act in [
        Activation::Gelu,
        Activation::GeluPytorchTanh,
        Activation::QuickGelu,
        Activation::Silu,
        Activation::Relu,
    ] {
        // Keep ReLU's inputs away from the kink at 0, where differences are undefined.
        let x = randn_var(&[4, 9], 2.0, 18).unwrap();
        if act == Activation::Relu {
            let shifted = x.as_tensor().affine(1.0, 0.0).unwrap();
            let away = (shifted.sign().unwrap() * 0.1).unwrap();
            x.set(&(x.as_tensor() + away).unwrap()).unwrap();
        }
        check(&[("x", &x)], || act.forward(x.as_tensor()));
        agree(
            &[&x],
            || act.forward(x.as_tensor()),
            || ops::activation::reference::activation(act, x.as_tensor()),
        );
    }
}

#[test]
fn gelu_matches_known_values() {
    let x = Tensor::new(&[-1.0f64, 0.0, 0.5, 2.0], &Device::Cpu).unwrap();
    let y = Activation::Gelu
        .forward(&x)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let expected = [
        -0.158_655_253_931_457_07,
        0.0,
        0.345_731_230_637_006_56,
        1.954_499_736_103_641_6,
    ];
    for (a, b) in y.iter().zip(expected) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
}

#[test]
fn swiglu_gradients() {
    let g = randn_var(&[3, 7], 2.0, 19).unwrap();
    let u = randn_var(&[3, 7], 2.0, 20).unwrap();
    check(&[("gate", &g), ("up", &u)], || {
        ops::swiglu(g.as_tensor(), u.as_tensor())
    });
    agree(
        &[&g, &u],
        || ops::swiglu(g.as_tensor(), u.as_tensor()),
        || ops::activation::reference::swiglu(g.as_tensor(), u.as_tensor()),
    );
}

#[test]
fn cross_entropy_gradients_with_ignored_labels() {
    let logits = randn_var(&[6, 11], 2.0, 21).unwrap();
    let labels = [3i64, -100, 0, 10, -100, 7];
    let report = check_gradients(
        &[("logits", &logits)],
        || ops::cross_entropy(logits.as_tensor(), &labels),
        &GradCheck {
            max_elems: 66,
            ..GradCheck::default()
        },
    )
    .unwrap();
    assert_eq!(report.checked, 66);
    agree(
        &[&logits],
        || ops::cross_entropy(logits.as_tensor(), &labels),
        || ops::loss::reference::cross_entropy(logits.as_tensor(), &labels),
    );
    // Ignored rows receive exactly zero gradient.
    let grads = ops::cross_entropy(logits.as_tensor(), &labels)
        .unwrap()
        .backward()
        .unwrap();
    let g = grads
        .get(logits.as_tensor())
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    assert!(g[1].iter().chain(g[4].iter()).all(|&v| v == 0.0));
}

#[test]
fn cross_entropy_refuses_batches_without_supervision_and_bad_labels() {
    let logits = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
    let err = ops::cross_entropy(&logits, &[-100, -100])
        .unwrap_err()
        .to_string();
    assert!(err.contains("no supervised position"), "{err}");
    let err = ops::cross_entropy(&logits, &[4, 0])
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
    let err = ops::cross_entropy(&logits, &[1]).unwrap_err().to_string();
    assert!(err.contains("1 labels"), "{err}");
}

#[test]
fn cross_entropy_value_is_the_mean_nll() {
    let logits = Tensor::new(&[[0f64, 0.0], [2.0f64.ln(), 0.0]], &Device::Cpu).unwrap();
    let v = ops::cross_entropy(&logits, &[0, 1])
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let expected = (2f64.ln() + 3f64.ln()) / 2.0;
    assert!((v - expected).abs() < 1e-12);
}

#[test]
fn linear_gradients_with_and_without_bias() {
    let x = randn_var(&[2, 3, 5], 1.0, 22).unwrap();
    let w = randn_var(&[4, 5], 1.0, 23).unwrap();
    let b = randn_var(&[4], 1.0, 24).unwrap();
    check(&[("x", &x), ("w", &w), ("b", &b)], || {
        ops::linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()))
    });
    check(&[("x", &x), ("w", &w)], || {
        ops::linear(x.as_tensor(), w.as_tensor(), None)
    });
    agree(
        &[&x, &w, &b],
        || ops::linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor())),
        || {
            let x2 = x.as_tensor().reshape((6, 5))?;
            ops::linear::reference::linear(&x2, w.as_tensor(), Some(b.as_tensor()))?
                .reshape((2, 3, 4))
        },
    );
}

#[test]
fn frozen_weight_gets_no_gradient_but_passes_one_through() {
    let x = randn_var(&[3, 5], 1.0, 25).unwrap();
    let w = randn_var(&[4, 5], 1.0, 26).unwrap().as_tensor().detach();
    let y = ops::linear(x.as_tensor(), &w, None).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(
        grads.get(&w).is_none(),
        "frozen weight must not get a gradient"
    );
    assert!(grads.get(x.as_tensor()).is_some());
    // The gradient store holds only what is needed: x and the op's output chain.
    let x_grad = grads.get(x.as_tensor()).unwrap();
    let expected = w
        .sum(0)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
        .broadcast_as((3, 5))
        .unwrap();
    assert!(max_abs_diff(x_grad, &expected).unwrap() < 1e-12);
}

#[test]
fn linear_rejects_mismatched_shapes_naming_both() {
    let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((4, 5), DType::F32, &Device::Cpu).unwrap();
    let err = ops::linear(&x, &w, None).unwrap_err().to_string();
    assert!(err.contains("[2, 3]") && err.contains("[4, 5]"), "{err}");
}

#[test]
fn attention_gradients_with_grouped_heads() {
    let q = randn_var(&[2, 4, 5, 3], 1.0, 27).unwrap();
    let k = randn_var(&[2, 2, 5, 3], 1.0, 28).unwrap();
    let v = randn_var(&[2, 2, 5, 3], 1.0, 29).unwrap();
    let mask = causal(2, 5);
    check(&[("q", &q), ("k", &k), ("v", &v)], || {
        Ok(ops::attention(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            Some(&mask),
            0.5,
        )?
        .output)
    });
    // Against an explicit per-head computation with repeated key/value heads.
    let fused = ops::attention(
        q.as_tensor(),
        k.as_tensor(),
        v.as_tensor(),
        Some(&mask),
        0.5,
    )
    .unwrap()
    .output;
    let rep = |t: &Tensor| -> Tensor {
        let (b, kv, s, d) = t.dims4().unwrap();
        t.unsqueeze(2)
            .unwrap()
            .broadcast_as((b, kv, 2, s, d))
            .unwrap()
            .reshape((b, kv * 2, s, d))
            .unwrap()
    };
    let (kr, vr) = (rep(k.as_tensor()), rep(v.as_tensor()));
    let scores = (q
        .as_tensor()
        .matmul(&kr.t().unwrap().contiguous().unwrap())
        .unwrap()
        * 0.5)
        .unwrap();
    let scores = scores.broadcast_add(&mask.unsqueeze(1).unwrap()).unwrap();
    let probs = ops::softmax::reference::softmax_last_dim(&scores).unwrap();
    let explicit = probs.matmul(&vr.contiguous().unwrap()).unwrap();
    let d = max_abs_diff(&fused, &explicit).unwrap();
    assert!(d < 1e-12);
}

#[test]
fn fused_attention_matches_the_tracked_composition() {
    let q = randn_var(&[2, 4, 5, 3], 1.0, 31).unwrap();
    let k = randn_var(&[2, 2, 6, 3], 1.0, 32).unwrap();
    let v = randn_var(&[2, 2, 6, 3], 1.0, 33).unwrap();
    // Keys beyond each query's position are blocked, with one past position cached.
    let valid = vec![vec![true; 6], vec![true, true, true, true, true, false]];
    let mask = ops::causal_mask(&valid, 1, 5, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    check(&[("q", &q), ("k", &k), ("v", &v)], || {
        Ok(ops::attention(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            Some(&mask),
            0.7,
        )?
        .output)
    });
    agree(
        &[&q, &k, &v],
        || {
            Ok(ops::attention(
                q.as_tensor(),
                k.as_tensor(),
                v.as_tensor(),
                Some(&mask),
                0.7,
            )?
            .output)
        },
        || {
            Ok(ops::attention_tracked(
                q.as_tensor(),
                k.as_tensor(),
                v.as_tensor(),
                Some(&mask),
                0.7,
            )?
            .output)
        },
    );
    // Only the inputs in the graph get gradients.
    let frozen_k = k.as_tensor().detach();
    let out = ops::attention(q.as_tensor(), &frozen_k, v.as_tensor(), Some(&mask), 0.7)
        .unwrap()
        .output;
    let grads = out.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&frozen_k).is_none());
    assert!(grads.get(q.as_tensor()).is_some() && grads.get(v.as_tensor()).is_some());
}

#[test]
fn embedding_lookup_gradient_via_index_select() {
    // Token embeddings go through index_select, whose backward is index_add.
    let table = randn_var(&[7, 4], 1.0, 30).unwrap();
    let ids = Tensor::new(&[3u32, 1, 3, 6], &Device::Cpu).unwrap();
    check(&[("table", &table)], || {
        table.as_tensor().index_select(&ids, 0)
    });
}

#[test]
fn ops_run_in_f32_and_bf16() {
    let x = Tensor::randn(0f32, 1.0, (3, 8), &Device::Cpu).unwrap();
    let g = Tensor::ones(8, DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap();
    let y32 = ops::layer_norm(&x, &g, &b, 1e-5).unwrap();
    let y16 = ops::layer_norm(
        &x.to_dtype(DType::BF16).unwrap(),
        &g.to_dtype(DType::BF16).unwrap(),
        &b.to_dtype(DType::BF16).unwrap(),
        1e-5,
    )
    .unwrap();
    assert_eq!(y16.dtype(), DType::BF16);
    let d = max_abs_diff(&y32, &y16.to_dtype(DType::F32).unwrap()).unwrap();
    assert!(d < 0.05);
    let w = Tensor::randn(0f32, 1.0, (5, 8), &Device::Cpu).unwrap();
    let l32 = ops::linear(&x, &w, None).unwrap();
    let l16 = ops::linear(
        &x.to_dtype(DType::BF16).unwrap(),
        &w.to_dtype(DType::BF16).unwrap(),
        None,
    )
    .unwrap();
    let d = max_abs_diff(&l32, &l16.to_dtype(DType::F32).unwrap()).unwrap();
    assert!(d < 0.1);
}

#[test]
fn spatial_layer_norm_normalises_whole_maps_and_keeps_token_weights() {
    use vlmkit_core::nn::SpatialLayerNorm;
    use vlmkit_core::params::ParamStore;
    let store = ParamStore::new(Device::Cpu, DType::F64);
    let norm = SpatialLayerNorm::new(4, 1e-5, store.init_builder(0)).unwrap();
    // Give the affine non-trivial values so the gradient check covers it.
    for (i, (name, var)) in store.vars().into_iter().enumerate() {
        var.set(
            randn_var(var.dims(), 1.0, 30 + i as u64)
                .unwrap()
                .as_tensor(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let x = randn_var(&[2, 3, 5, 4], 1.5, 21).unwrap();
    let vars = store.vars();
    let mut all: Vec<(&str, &Var)> = vars.iter().map(|(n, v)| (n.as_str(), v)).collect();
    all.push(("x", &x));
    check(&all, || norm.forward(x.as_tensor()));

    // Scaling a whole map changes nothing; scaling one token of it does.
    let map = x.as_tensor().clone();
    let y = norm.forward(&map).unwrap();
    let scaled = norm.forward(&(&map * 3.0).unwrap()).unwrap();
    assert!(max_abs_diff(&y, &scaled).unwrap() < 1e-4); // eps aside
    let mut token_scale = vec![1f64; 5];
    token_scale[2] = 3.0;
    let w = Tensor::from_vec(token_scale, (1, 1, 5, 1), &Device::Cpu).unwrap();
    let reweighted = norm.forward(&map.broadcast_mul(&w).unwrap()).unwrap();
    assert!(max_abs_diff(&y, &reweighted).unwrap() > 0.1);
    let err = norm.forward(&Tensor::zeros(4, DType::F64, &Device::Cpu).unwrap());
    assert!(err.unwrap_err().to_string().contains("[4]"));
}

#[test]
fn additive_key_mask_blocks_padding() {
    let valid = Tensor::new(&[[1f32, 1., 0.], [1., 0., 0.]], &Device::Cpu).unwrap();
    let mask = ops::additive_key_mask(&valid).unwrap();
    assert_eq!(mask.dims(), &[2, 1, 3]);
    let v = mask.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(&v[..2], &[0.0, 0.0]);
    assert!(v[2] == f32::NEG_INFINITY && v[4] == f32::NEG_INFINITY && v[5] == f32::NEG_INFINITY);
    assert_eq!(v[3], 0.0);
}

/// The CUDA path (candle's fused kernel forward, vlmkit's backward as tensor ops)
/// run on the CPU, where candle's kernels have CPU versions: finite differences,
/// and agreement with the reference composition in value and gradient.
#[test]
fn fused_kernel_paths_have_correct_gradients() {
    use vlmkit_core::ops::{fused, norm, rope, softmax};
    let x = randn_var(&[3, 4, 7], 2.0, 31).unwrap();
    check(&[("x", &x)], || fused::softmax_last_dim(x.as_tensor()));
    agree(
        &[&x],
        || fused::softmax_last_dim(x.as_tensor()),
        || softmax::reference::softmax_last_dim(x.as_tensor()),
    );

    let scores = randn_var(&[2, 3, 5, 5], 1.5, 32).unwrap();
    for mask in [causal(2, 5), causal(1, 5)] {
        check(&[("scores", &scores)], || {
            fused::masked_softmax(scores.as_tensor(), &mask, 0.37)
        });
        agree(
            &[&scores],
            || fused::masked_softmax(scores.as_tensor(), &mask, 0.37),
            || softmax::reference::masked_softmax(scores.as_tensor(), &mask, 0.37),
        );
    }
    let ones = Tensor::ones((1, 1, 2, 3), DType::F32, &Device::Cpu).unwrap();
    let blocked = Tensor::new(&[[[0f32, 0., 0.], [f32::NEG_INFINITY; 3]]], &Device::Cpu).unwrap();
    let y = fused::masked_softmax(&ones, &blocked, 1.0).unwrap();
    let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(&v[3..], &[0.0, 0.0, 0.0]);

    // Norms, with an affine that tiles the width (2 channels over 6). candle's CPU
    // norm kernels take f32, not f64: compared with the reference in f32 here; the
    // backward formulas meet finite differences in the module's own tests.
    let f32_var = |shape: &[usize], seed| {
        let t = randn_var(shape, 2.0, seed).unwrap();
        Var::from_tensor(&t.as_tensor().to_dtype(DType::F32).unwrap()).unwrap()
    };
    let (x, gamma, beta) = (
        f32_var(&[3, 5, 6], 33),
        f32_var(&[2], 34),
        f32_var(&[2], 35),
    );
    let (xt, gt, bt) = (x.as_tensor(), gamma.as_tensor(), beta.as_tensor());
    agree_within(
        &[&x, &gamma, &beta],
        || fused::layer_norm(xt, gt, bt, 1e-5),
        || norm::reference::layer_norm(xt, gt, bt, 1e-5),
        1e-4,
    );
    agree_within(
        &[&x, &gamma],
        || fused::rms_norm(xt, gt, 1e-6),
        || norm::reference::rms_norm(xt, gt, 1e-6),
        1e-4,
    );

    let x = randn_var(&[2, 5, 3, 8], 1.0, 36).unwrap();
    let shared = Tensor::new(&[0u32, 1, 2, 3, 4], &Device::Cpu).unwrap();
    let batched = Tensor::new(&[[0u32, 0, 1, 2, 3], [0, 1, 2, 3, 4]], &Device::Cpu).unwrap();
    for positions in [shared, batched] {
        let (cos, sin) = ops::rope_tables(&positions, 8, 500.0, DType::F64).unwrap();
        check(&[("x", &x)], || fused::rope(x.as_tensor(), &cos, &sin));
        agree(
            &[&x],
            || fused::rope(x.as_tensor(), &cos, &sin),
            || rope::reference::rope(x.as_tensor(), &cos, &sin),
        );
    }
}
