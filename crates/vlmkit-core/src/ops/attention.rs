//! Scaled dot-product attention with an additive mask and grouped key/value heads.
//!
//! [`attention`] is one node in the autograd graph: the forward runs on detached
//! inputs and its backward computes dq, dk, dv directly from the saved
//! probabilities, so the large `B×H×T×S` score and probability tensors never get
//! gradient buffers of their own (candle allocates and accumulates one per graph
//! node). [`attention_tracked`] is the plain composition, whose probabilities stay
//! in the graph — for losses on the attention map itself.

use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};

use super::linear::matmul;
use super::needs_grad;
use super::softmax::{masked_softmax, softmax_backward};

/// The attended values and the attention probabilities that produced them.
#[derive(Debug, Clone)]
pub struct Attended {
    /// `B×H×T×D`.
    pub output: Tensor,
    /// `B×H×T×S`: what each query attended to (for analysis and grounding losses).
    pub probs: Tensor,
}

/// `softmax(scale · q·kᵀ + mask) · v`, as one graph node; `probs` are detached.
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
    let plain = attention_tracked(&q.detach(), &k.detach(), &v.detach(), mask, scale)?;
    if !(q.track_op() || k.track_op() || v.track_op()) {
        return Ok(plain);
    }
    let op = FusedAttention {
        output: Arc::new(plain.output.clone()),
        probs: plain.probs.clone(),
        scale,
    };
    let output = q.apply_op3(k, v, op)?;
    Ok(Attended {
        output,
        probs: plain.probs,
    })
}

/// The saved result of the forward, and what the backward needs.
struct FusedAttention {
    output: Arc<Tensor>,
    probs: Tensor,
    scale: f64,
}

impl FusedAttention {
    fn copy_output(&self) -> Result<(Storage, Shape)> {
        let (storage, layout) = self.output.storage_and_layout();
        if !layout.is_contiguous() || layout.start_offset() != 0 {
            bail!("fused attention: saved output must be contiguous");
        }
        Ok((storage.try_clone(layout)?, layout.shape().clone()))
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "vlmkit-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        match self.copy_output()? {
            (Storage::Cpu(s), shape) => Ok((s, shape)),
            _ => bail!("fused attention: output is not on the CPU"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        match self.copy_output()? {
            (Storage::Cuda(s), shape) => Ok((s, shape)),
            _ => bail!("fused attention: output is not on the GPU"),
        }
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, h, t, d) = q.dims4()?;
        let (_, kv, s, _) = k.dims4()?;
        let g = h / kv;
        // Query heads sharing a key/value head are folded into rows, as in the forward.
        let p = self.probs.reshape((b, kv, g * t, s))?;
        let dout = grad.contiguous()?.reshape((b, kv, g * t, d))?;
        let dv = needs_grad(v).then(|| matmul(&p.t()?, &dout)).transpose()?;
        let dp = matmul(&dout, &v.t()?)?.reshape((b, h, t, s))?;
        let ds = softmax_backward(&self.probs, &dp, self.scale)?.reshape((b, kv, g * t, s))?;
        let dq = needs_grad(q)
            .then(|| matmul(&ds, k)?.reshape((b, h, t, d)))
            .transpose()?;
        let dk = needs_grad(k)
            .then(|| matmul(&ds.t()?, &q.contiguous()?.reshape((b, kv, g * t, d))?))
            .transpose()?;
        Ok((dq, dk, dv))
    }
}

/// `softmax(scale · q·kᵀ + mask) · v` as a composition of graph nodes (matmuls and
/// the fused masked softmax): `probs` take part in the autograd graph.
pub fn attention_tracked(
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

/// An additive key mask (`B×1×S`) from a `B×S` tensor of 1 (keep) / 0 (block), e.g.
/// a text context's mask; broadcast it over queries before [`masked_softmax`].
pub fn additive_key_mask(valid: &Tensor) -> Result<Tensor> {
    let (b, s) = valid.dims2()?;
    let blocked =
        Tensor::full(f32::NEG_INFINITY, (b, s), valid.device())?.to_dtype(valid.dtype())?;
    let keep = valid.zeros_like()?;
    valid
        .ge(0.5)?
        .where_cond(&keep, &blocked)?
        .reshape((b, 1, s))
        .map(|m| m.detach())
}
