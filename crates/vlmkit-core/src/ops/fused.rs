//! The GPU path of the ops: candle's fused kernels forward, and the backward they
//! lack written as tensor ops, which run on any device.
//!
//! candle applies its fused softmax, norms and rope with `apply_op*_no_bwd`, so no
//! gradient flows through them. Here the input `x` and the kernel's output `y` enter
//! [`Attach`], whose forward hands back `y` unchanged and whose backward is the op's
//! gradient: the forward costs one fused kernel and the gradient flows. On the CPU
//! the ops use vlmkit's own kernels instead; the tests run these paths on the CPU
//! (candle's kernels have CPU versions) against finite differences.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, D};

use super::norm::reference::tile;
use super::rope::reference::rope as rotate;

/// `softmax(x)` over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    let y = candle_nn::ops::softmax_last_dim(&x)?;
    attach(&x, &y, Backward::Softmax)
}

/// `softmax(scale · scores + mask)` over the last dimension, for `scores` `B×M×T×S`
/// and an additive mask `1×T×S` or `B×T×S`. Rows whose every entry is blocked come
/// out as zeros, as on the CPU.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let mask = super::cast_like(mask, scores)?.unsqueeze(1)?.detach();
    // A floor instead of -inf: candle's kernel would turn a fully blocked row into
    // NaN. Such rows come out uniform and are then zeroed.
    let floor = match scores.dtype() {
        DType::F16 => -6.0e4,
        _ => -1.0e30,
    };
    let x = (scores * scale)?.broadcast_add(&mask)?.maximum(floor)?;
    let open = x
        .detach()
        .max_keepdim(D::Minus1)?
        .gt(floor)?
        .to_dtype(x.dtype())?;
    softmax_last_dim(&x)?.broadcast_mul(&open)
}

/// LayerNorm over the last dimension; `gamma` and `beta` may tile the width.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.contiguous()?;
    let width = x.dim(D::Minus1)?;
    let ones = Tensor::ones(width, x.dtype(), x.device())?;
    let zeros = Tensor::zeros(width, x.dtype(), x.device())?;
    let normed = candle_nn::ops::layer_norm(&x, &ones, &zeros, eps as f32)?;
    attach(&x, &normed, Backward::LayerNorm { eps })?
        .broadcast_mul(&tile(gamma, width)?)?
        .broadcast_add(&tile(beta, width)?)
}

/// RMSNorm over the last dimension; `gamma` may tile the width.
pub fn rms_norm(x: &Tensor, gamma: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.contiguous()?;
    let width = x.dim(D::Minus1)?;
    let ones = Tensor::ones(width, x.dtype(), x.device())?;
    let normed = candle_nn::ops::rms_norm(&x, &ones, eps as f32)?;
    attach(&x, &normed, Backward::RmsNorm { eps })?.broadcast_mul(&tile(gamma, width)?)
}

/// Rotary embedding of `x` (`B×T×H×D`, rotate-half layout) by constant tables
/// (`T×D/2` or `B×T×D/2`).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    let (cos, sin) = (cos.contiguous()?.detach(), sin.contiguous()?.detach());
    let y = candle_nn::rotary_emb::rope_thd(&x, &cos, &sin)?;
    attach(&x, &y, Backward::Rope { cos, sin })
}

/// The gradient of a fused op with respect to its input.
enum Backward {
    Softmax,
    LayerNorm { eps: f64 },
    RmsNorm { eps: f64 },
    Rope { cos: Tensor, sin: Tensor },
}

impl Backward {
    /// `∂L/∂x` from the input `x`, the output `y` and `g = ∂L/∂y`. Row statistics
    /// are computed in at least f32 whatever the compute dtype.
    fn grad(&self, x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let wide = |t: &Tensor| match dtype {
            DType::BF16 | DType::F16 => t.to_dtype(DType::F32),
            _ => Ok(t.clone()),
        };
        let dx = match self {
            // dx = y ⊙ (g − Σ g⊙y)
            Backward::Softmax => {
                let (y, g) = (wide(y)?, wide(g)?);
                let dot = (&g * &y)?.sum_keepdim(D::Minus1)?;
                (g.broadcast_sub(&dot)? * y)?
            }
            // dx = r·(g − mean g − x̂·mean(g⊙x̂)), x̂ = (x − μ)·r, r = 1/√(σ² + eps)
            Backward::LayerNorm { eps } => {
                let (x, g) = (wide(x)?, wide(g)?);
                let centered = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
                let r = (centered.sqr()?.mean_keepdim(D::Minus1)? + *eps)?
                    .sqrt()?
                    .recip()?;
                let normed = centered.broadcast_mul(&r)?;
                let mean_g = g.mean_keepdim(D::Minus1)?;
                let mean_gx = (&g * &normed)?.mean_keepdim(D::Minus1)?;
                g.broadcast_sub(&mean_g)?
                    .sub(&normed.broadcast_mul(&mean_gx)?)?
                    .broadcast_mul(&r)?
            }
            // dx = r·(g − x̂·mean(g⊙x̂)), x̂ = x·r, r = 1/√(mean x² + eps)
            Backward::RmsNorm { eps } => {
                let (x, g) = (wide(x)?, wide(g)?);
                let r = (x.sqr()?.mean_keepdim(D::Minus1)? + *eps)?
                    .sqrt()?
                    .recip()?;
                let normed = x.broadcast_mul(&r)?;
                let mean_gx = (&g * &normed)?.mean_keepdim(D::Minus1)?;
                g.sub(&normed.broadcast_mul(&mean_gx)?)?.broadcast_mul(&r)?
            }
            // A rotation's transpose is the rotation by the negative angle.
            Backward::Rope { cos, sin } => rotate(g, cos, &sin.neg()?)?,
        };
        dx.to_dtype(dtype)
    }
}

/// `y`'s values with `backward` as the gradient with respect to `x`.
fn attach(x: &Tensor, y: &Tensor, backward: Backward) -> Result<Tensor> {
    x.apply_op2(&y.contiguous()?.detach(), Attach(backward))
}

struct Attach(Backward);

/// The kernel's output, as a new storage (candle's custom ops cannot alias).
fn pass_through<S: BackendStorage>(y: &S, layout: &Layout) -> Result<(S, Shape)> {
    match layout.contiguous_offsets() {
        Some((0, end)) if end == layout.shape().elem_count() => {
            Ok((y.try_clone(layout)?, layout.shape().clone()))
        }
        _ => bail!("fused op: the kernel's output must be contiguous from offset 0"),
    }
}

impl CustomOp2 for Attach {
    fn name(&self) -> &'static str {
        "fused-with-backward"
    }

    fn cpu_fwd(
        &self,
        _x: &CpuStorage,
        _: &Layout,
        y: &CpuStorage,
        layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        pass_through(y, layout)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _x: &candle_core::CudaStorage,
        _: &Layout,
        y: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        pass_through(y, layout)
    }

    fn bwd(
        &self,
        x: &Tensor,
        _y: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(self.0.grad(x, res, grad_res)?), None))
    }
}

#[cfg(test)]
mod tests {
    //! candle's CPU norm kernels take no f64, which finite differences need: here the
    //! backward formulas are checked in f64 with the reference normalisation as the
    //! "kernel" output. `tests/ops.rs` holds the kernels themselves against the
    //! reference in f32.
    use super::*;
    use crate::gradcheck::{check_gradients, randn_var, random_projection, GradCheck};

    fn normalised(x: &Tensor, centered: bool, eps: f64) -> Result<Tensor> {
        let x = if centered {
            x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?
        } else {
            x.clone()
        };
        x.broadcast_div(&(x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?)
    }

    #[test]
    fn norm_backwards_match_finite_differences() {
        let x = randn_var(&[3, 5, 6], 2.0, 41).unwrap();
        for (centered, backward) in [(true, 0), (false, 1)] {
            let report = check_gradients(
                &[("x", &x)],
                || {
                    let y = normalised(x.as_tensor(), centered, 1e-5)?;
                    let op = match backward {
                        0 => Backward::LayerNorm { eps: 1e-5 },
                        _ => Backward::RmsNorm { eps: 1e-5 },
                    };
                    random_projection(&attach(x.as_tensor(), &y, op)?, 7)
                },
                &GradCheck::default(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            assert!(report.checked > 0);
        }
    }
}
