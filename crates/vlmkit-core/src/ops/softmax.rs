//! Softmax and log-softmax over the last dimension, with an optional additive mask
//! and score scale fused in (the attention case), each with a recorded backward.
//!
//! candle's `softmax_last_dim` is applied with `apply_op1_no_bwd`: gradients stop at
//! it without an error. These ops record their backward.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};

use super::kernel::{dispatch, for_each_row, Kernel, Real};
use super::{is_cpu, needs_grad};

/// `softmax(x)` over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if is_cpu(x) {
        x.contiguous()?.apply_op1(Softmax)
    } else if x.device().is_cuda() {
        super::fused::softmax_last_dim(x)
    } else {
        reference::softmax_last_dim(x)
    }
}

/// `softmax(scale · scores + mask)` over the last dimension.
///
/// `scores` is `B×M×T×S`; `mask` is additive (`0` keeps, `-inf` blocks) and either
/// `1×T×S` or `B×T×S`. A row whose every entry is blocked comes out as zeros rather
/// than NaN (padding queries attend to nothing).
pub fn masked_softmax(scores: &Tensor, mask: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let (b, _m, t, s) = scores.dims4()?;
    let mask = match mask {
        None => {
            if scale == 1.0 {
                return softmax_last_dim(scores);
            }
            return softmax_last_dim(&(scores * scale)?);
        }
        Some(mask) => mask,
    };
    let (bm, tm, sm) = mask.dims3()?;
    if (bm != 1 && bm != b) || tm != t || sm != s {
        bail!(
            "masked_softmax: mask of shape {:?} does not fit scores of shape {:?} (expected 1×{t}×{s} or {b}×{t}×{s})",
            mask.dims(),
            scores.dims()
        );
    }
    if is_cpu(scores) {
        let mask = mask.to_dtype(scores.dtype())?.contiguous()?.detach();
        scores
            .contiguous()?
            .apply_op2(&mask, MaskedSoftmax { scale })
    } else if scores.device().is_cuda() {
        super::fused::masked_softmax(scores, mask, scale)
    } else {
        reference::masked_softmax(scores, mask, scale)
    }
}

/// `log(softmax(x))` over the last dimension.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if is_cpu(x) {
        x.contiguous()?.apply_op1(LogSoftmax)
    } else {
        reference::log_softmax_last_dim(x)
    }
}

/// Compositions of candle ops whose backward candle gets right. They are the
/// oracles the fused kernels are tested against, and the path on devices without a
/// fused kernel.
pub mod reference {
    use super::*;

    pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
        // Shift by the (detached) max: softmax is shift-invariant, so the gradient
        // through the shift is zero and need not be recorded.
        let max = x.max_keepdim(D::Minus1)?.detach();
        let e = x.broadcast_sub(&max)?.exp()?;
        e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
    }

    pub fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
        let (b, m, t, s) = scores.dims4()?;
        let mask = mask.to_dtype(scores.dtype())?.unsqueeze(1)?;
        let x = (scores * scale)?.broadcast_add(&mask)?;
        // Fully blocked rows: max is -inf; clamp so exp gives 0 instead of NaN.
        let max = x.max_keepdim(D::Minus1)?.detach();
        let finite_max = max.clamp(-1e30, f64::INFINITY)?;
        let e = x.broadcast_sub(&finite_max)?.exp()?;
        let sum = e.sum_keepdim(D::Minus1)?;
        let safe_sum = sum.clamp(1e-30, f64::INFINITY)?;
        e.broadcast_div(&safe_sum)?.reshape((b, m, t, s))
    }

    pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
        let max = x.max_keepdim(D::Minus1)?.detach();
        let shifted = x.broadcast_sub(&max)?;
        let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        shifted.broadcast_sub(&lse)
    }
}

fn last_dim(layout: &Layout) -> usize {
    layout.dims().last().copied().unwrap_or(1)
}

fn softmax_row<T: Real>(x: &[T], mask: Option<&[T]>, scale: T, out: &mut [T]) {
    let mut max = T::neg_infinity();
    for (i, &v) in x.iter().enumerate() {
        let v = v * scale + mask.map_or(T::zero(), |m| m[i]);
        out[i] = v;
        if v > max {
            max = v;
        }
    }
    if max == T::neg_infinity() {
        out.iter_mut().for_each(|o| *o = T::zero());
        return;
    }
    let mut sum = T::zero();
    for o in out.iter_mut() {
        *o = (*o - max).exp();
        sum = sum + *o;
    }
    let inv = sum.recip();
    out.iter_mut().for_each(|o| *o = *o * inv);
}

struct SoftmaxKernel {
    width: usize,
    /// For the masked variant: rows per batch element (M·T), T, and mask batch size.
    mask_geometry: Option<(usize, usize, usize)>,
    scale: f64,
}

impl Kernel<1> for SoftmaxKernel {
    const NAME: &'static str = "softmax";
    fn run<T: Real>(&self, [x]: [&[T]; 1]) -> Result<Vec<T>> {
        let mut out = vec![T::zero(); x.len()];
        let w = self.width;
        let scale = T::from_f64(self.scale);
        for_each_row(&mut out, w, |r, row| {
            softmax_row(&x[r * w..(r + 1) * w], None, scale, row)
        });
        Ok(out)
    }
}

impl Kernel<2> for SoftmaxKernel {
    const NAME: &'static str = "masked-softmax";
    fn run<T: Real>(&self, [x, mask]: [&[T]; 2]) -> Result<Vec<T>> {
        let (rows_per_batch, t, mask_batch) = match self.mask_geometry {
            Some(g) => g,
            None => bail!("masked-softmax: missing mask geometry"),
        };
        let mut out = vec![T::zero(); x.len()];
        let w = self.width;
        let scale = T::from_f64(self.scale);
        for_each_row(&mut out, w, |r, row| {
            let b = if mask_batch == 1 {
                0
            } else {
                r / rows_per_batch
            };
            let mrow = b * t + r % t;
            softmax_row(
                &x[r * w..(r + 1) * w],
                Some(&mask[mrow * w..(mrow + 1) * w]),
                scale,
                row,
            )
        });
        Ok(out)
    }
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "vlmkit-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let k = SoftmaxKernel {
            width: last_dim(l),
            mask_geometry: None,
            scale: 1.0,
        };
        Ok((dispatch(&k, [(s, l)])?, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if !needs_grad(arg) {
            return Ok(None);
        }
        softmax_backward(res, grad, 1.0).map(Some)
    }
}

struct MaskedSoftmax {
    scale: f64,
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "vlmkit-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_b, m, t, s) = l1.shape().dims4()?;
        let bm = l2.dims()[0];
        let k = SoftmaxKernel {
            width: s,
            mask_geometry: Some((m * t, t, bm)),
            scale: self.scale,
        };
        Ok((dispatch(&k, [(s1, l1), (s2, l2)])?, l1.shape().clone()))
    }

    fn bwd(
        &self,
        scores: &Tensor,
        _mask: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if !needs_grad(scores) {
            return Ok((None, None));
        }
        Ok((Some(softmax_backward(res, grad, self.scale)?), None))
    }
}

/// `dx = scale · y ⊙ (g − Σ g⊙y)`: the backward of a softmax whose output is `y`.
pub(crate) fn softmax_backward(y: &Tensor, grad: &Tensor, scale: f64) -> Result<Tensor> {
    if is_cpu(y) {
        let grad = grad.contiguous()?;
        y.apply_op2_no_bwd(&grad, &SoftmaxGrad { scale })
    } else {
        let gy = (grad * y)?.sum_keepdim(D::Minus1)?;
        (y * grad.broadcast_sub(&gy)?)? * scale
    }
}

struct SoftmaxGrad {
    scale: f64,
}

struct SoftmaxGradKernel {
    width: usize,
    scale: f64,
}

impl Kernel<2> for SoftmaxGradKernel {
    const NAME: &'static str = "softmax-grad";
    fn run<T: Real>(&self, [y, g]: [&[T]; 2]) -> Result<Vec<T>> {
        let w = self.width;
        let scale = T::from_f64(self.scale);
        let mut out = vec![T::zero(); y.len()];
        for_each_row(&mut out, w, |r, row| {
            let (y, g) = (&y[r * w..(r + 1) * w], &g[r * w..(r + 1) * w]);
            let dot: T = y.iter().zip(g).map(|(&a, &b)| a * b).sum();
            for i in 0..w {
                row[i] = scale * y[i] * (g[i] - dot);
            }
        });
        Ok(out)
    }
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "vlmkit-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let k = SoftmaxGradKernel {
            width: last_dim(l1),
            scale: self.scale,
        };
        Ok((dispatch(&k, [(s1, l1), (s2, l2)])?, l1.shape().clone()))
    }
}

struct LogSoftmax;

struct LogSoftmaxKernel {
    width: usize,
}

impl Kernel<1> for LogSoftmaxKernel {
    const NAME: &'static str = "log-softmax";
    fn run<T: Real>(&self, [x]: [&[T]; 1]) -> Result<Vec<T>> {
        let w = self.width;
        let mut out = vec![T::zero(); x.len()];
        for_each_row(&mut out, w, |r, row| {
            let x = &x[r * w..(r + 1) * w];
            let max = x.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
            let lse = x.iter().map(|&v| (v - max).exp()).sum::<T>().ln() + max;
            for (o, &v) in row.iter_mut().zip(x) {
                *o = v - lse;
            }
        });
        Ok(out)
    }
}

impl CustomOp1 for LogSoftmax {
    fn name(&self) -> &'static str {
        "vlmkit-log-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let k = LogSoftmaxKernel { width: last_dim(l) };
        Ok((dispatch(&k, [(s, l)])?, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if !needs_grad(arg) {
            return Ok(None);
        }
        // dx = g − softmax(x) · Σg, with softmax(x) = exp(y).
        let sum = grad.sum_keepdim(D::Minus1)?;
        Ok(Some((grad - res.exp()?.broadcast_mul(&sum)?)?))
    }
}
