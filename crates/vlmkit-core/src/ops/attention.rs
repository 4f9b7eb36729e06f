//! Scaled dot-product attention with an additive mask and grouped key/value heads,
//! built from matmuls (whose backward candle gets right) and the fused masked softmax.

use candle_core::{bail, Result, Tensor};

use super::linear::matmul;
use super::softmax::masked_softmax;

/// The attended values and the attention probabilities that produced them.
#[derive(Debug, Clone)]
pub struct Attended {
    /// `B×H×T×D`.
    pub output: Tensor,
    /// `B×H×T×S`: what each query attended to (for analysis and grounding losses).
    pub probs: Tensor,
}

/// `softmax(scale · q·kᵀ + mask) · v`.
///
/// `q` is `B×H×T×D`; `k` and `v` are `B×KV×S×D` with `H` a multiple of `KV` (grouped-
/// query attention: query head `h` reads key/value head `h / (H/KV)`, as Hugging Face's
/// `repeat_kv` does). `mask` is additive, `1×T×S` or `B×T×S`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Attended> {
    let (b, h, t, d) = q.dims4()?;
    let (bk, kv, s, dk) = k.dims4()?;
    if bk != b || dk != d || v.dims() != k.dims() || kv == 0 || h % kv != 0 {
        bail!(
            "attention: q of shape {:?}, k of shape {:?} and v of shape {:?} do not fit together",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let groups = h / kv;
    // Fold the query heads that share a key/value head into the row dimension, so
    // keys and values are never copied per head.
    let q = q.contiguous()?.reshape((b, kv, groups * t, d))?;
    let scores = matmul(&q, &k.t()?)?.reshape((b, h, t, s))?;
    let probs = masked_softmax(&scores, mask, scale)?;
    let output =
        matmul(&probs.reshape((b, kv, groups * t, s))?, &v.contiguous()?)?.reshape((b, h, t, d))?;
    Ok(Attended { output, probs })
}

/// An additive mask (`B×T×S`, `0` = attend, `-inf` = blocked) for `t` new queries
/// after `past` cached positions: causal, and blocking keys whose `key_valid` entry
/// (`B` rows of `past + t`) is false.
pub fn causal_mask(
    key_valid: &[Vec<bool>],
    past: usize,
    t: usize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let b = key_valid.len();
    let s = past + t;
    let mut data = vec![0f32; b * t * s];
    for (bi, valid) in key_valid.iter().enumerate() {
        if valid.len() != s {
            bail!(
                "causal_mask: row {bi} has {} key flags, expected {s}",
                valid.len()
            );
        }
        for qi in 0..t {
            let row = &mut data[(bi * t + qi) * s..(bi * t + qi + 1) * s];
            for (ki, slot) in row.iter_mut().enumerate() {
                if ki > past + qi || !valid[ki] {
                    *slot = f32::NEG_INFINITY;
                }
            }
        }
    }
    Tensor::from_vec(data, (b, t, s), device)
}

/// An additive mask (`B×1×S`, broadcast over queries) that blocks invalid keys only:
/// bidirectional attention over a padded memory.
pub fn padding_mask(key_valid: &[Vec<bool>], device: &candle_core::Device) -> Result<Tensor> {
    let b = key_valid.len();
    let s = key_valid.first().map_or(0, |v| v.len());
    let mut data = Vec::with_capacity(b * s);
    for valid in key_valid {
        if valid.len() != s {
            bail!("padding_mask: rows have different lengths");
        }
        data.extend(
            valid
                .iter()
                .map(|&ok| if ok { 0f32 } else { f32::NEG_INFINITY }),
        );
    }
    Tensor::from_vec(data, (b, 1, s), device)
}
