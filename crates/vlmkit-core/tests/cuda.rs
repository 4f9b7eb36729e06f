//! GPU tests: every op on `cuda:0` against the same op on the CPU (whose gradients
//! the `ops` tests hold against finite differences), value and gradient of every
//! input, in f32 and bf16. Built only with `--features cuda`; they need a GPU:
//! `cargo test --release --features cuda -p vlmkit-core --test cuda`.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Result, Tensor, Var};
use vlmkit_core::gradcheck::{max_abs, max_abs_diff, randn, random_projection};
use vlmkit_core::ops::{self, Activation};

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need a CUDA device")
}

/// Runs `f` on CPU copies and on GPU copies of `inputs` (as trainable variables
/// of `dtype`) and compares the outputs and the gradients of a fixed random
/// projection, relative to each one's largest entry.
fn same_on_both(
    what: &str,
    inputs: &[Tensor],
    dtype: DType,
    tolerance: f64,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let run = |device: &Device| -> (Tensor, Vec<Tensor>) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(&t.to_dtype(dtype)?.to_device(device)?))
            .collect::<Result<_>>()
            .unwrap();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&tensors).unwrap();
        let grads = random_projection(&out.to_dtype(DType::F32).unwrap(), 3)
            .unwrap()
            .backward()
            .unwrap();
        let cpu = |t: &Tensor| {
            t.to_device(&Device::Cpu)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
        };
        let grads = vars
            .iter()
            .map(|v| cpu(grads.get(v.as_tensor()).expect("no gradient")))
            .collect();
        (cpu(&out), grads)
    };
    let (out_cpu, grads_cpu) = run(&Device::Cpu);
    let (out_gpu, grads_gpu) = run(&gpu());
    let rel = |a: &Tensor, b: &Tensor| max_abs_diff(a, b).unwrap() / max_abs(a).unwrap().max(1e-12);
    let d = rel(&out_cpu, &out_gpu);
    assert!(
        d < tolerance,
        "{what} ({dtype:?}): outputs differ by {d} (relative)"
    );
    for (i, (a, b)) in grads_cpu.iter().zip(&grads_gpu).enumerate() {
        let d = rel(a, b);
        assert!(
            d < tolerance,
            "{what} ({dtype:?}): gradient of input {i} differs by {d}"
        );
    }
}

#[test]
fn every_op_matches_the_cpu_in_value_and_gradient() {
    let x = randn(&[4, 6, 16], 1.5, 1).unwrap();
    let w = randn(&[12, 16], 0.3, 2).unwrap();
    let b = randn(&[12], 0.3, 3).unwrap();
    let gamma = randn(&[16], 1.0, 4).unwrap();
    let q = randn(&[2, 4, 5, 8], 1.0, 5).unwrap();
    let kv = randn(&[2, 2, 5, 8], 1.0, 6).unwrap();
    let valid = vec![vec![true; 5], vec![true, true, true, false, false]];
    let mask = ops::causal_mask(&valid, 0, 5, &Device::Cpu).unwrap();
    let positions = Tensor::new(&[0u32, 1, 2, 3, 4], &Device::Cpu).unwrap();
    let (cos, sin) = ops::rope_tables(&positions, 8, 10000.0, DType::F32).unwrap();
    let labels: Vec<i64> = (0..24)
        .map(|i| if i % 5 == 0 { -100 } else { i % 16 })
        .collect();
    let image = randn(&[2, 6, 6, 16], 1.0, 7).unwrap();
    let kernel = randn(&[16, 1, 3, 3], 0.5, 8).unwrap();

    for (dtype, tolerance) in [(DType::F32, 1e-4), (DType::BF16, 3e-2)] {
        let on = |t: &Tensor, like: &Tensor| t.to_dtype(like.dtype())?.to_device(like.device());
        same_on_both("softmax", &[x.clone()], dtype, tolerance, |t| {
            ops::softmax_last_dim(&t[0])
        });
        same_on_both("log_softmax", &[x.clone()], dtype, tolerance, |t| {
            ops::log_softmax_last_dim(&t[0])
        });
        same_on_both(
            "linear",
            &[x.clone(), w.clone(), b.clone()],
            dtype,
            tolerance,
            |t| ops::linear(&t[0], &t[1], Some(&t[2])),
        );
        same_on_both(
            "layer_norm",
            &[x.clone(), gamma.clone(), gamma.clone()],
            dtype,
            tolerance,
            |t| ops::layer_norm(&t[0], &t[1], &t[2], 1e-5),
        );
        same_on_both(
            "rms_norm",
            &[x.clone(), gamma.clone()],
            dtype,
            tolerance,
            |t| ops::rms_norm(&t[0], &t[1], 1e-6),
        );
        for act in [Activation::Gelu, Activation::QuickGelu, Activation::Silu] {
            same_on_both(&format!("{act:?}"), &[x.clone()], dtype, tolerance, |t| {
                act.forward(&t[0])
            });
        }
        same_on_both(
            "swiglu",
            &[x.clone(), x.affine(0.5, 0.1).unwrap()],
            dtype,
            tolerance,
            |t| ops::swiglu(&t[0], &t[1]),
        );
        same_on_both(
            "rope",
            &[q.transpose(1, 2).unwrap().contiguous().unwrap()],
            dtype,
            tolerance,
            |t| ops::rope(&t[0], &on(&cos, &t[0])?, &on(&sin, &t[0])?),
        );
        same_on_both("masked_softmax", &[q.clone()], dtype, tolerance, |t| {
            let scores = ops::matmul(&t[0], &t[0].t()?)?;
            ops::masked_softmax(&scores, Some(&on(&mask, &t[0])?), 0.3)
        });
        same_on_both(
            "attention",
            &[q.clone(), kv.clone(), kv.affine(-1.0, 0.2).unwrap()],
            dtype,
            tolerance,
            |t| Ok(ops::attention(&t[0], &t[1], &t[2], Some(&on(&mask, &t[0])?), 0.35)?.output),
        );
        same_on_both(
            "cross_entropy",
            &[x.reshape((24, 16)).unwrap()],
            dtype,
            tolerance,
            |t| ops::cross_entropy(&t[0].to_dtype(DType::F32)?, &labels),
        );
        same_on_both(
            "depthwise_conv2d",
            &[image.clone(), kernel.clone()],
            dtype,
            tolerance,
            |t| ops::depthwise_conv2d(&t[0], &t[1]),
        );
    }
}
