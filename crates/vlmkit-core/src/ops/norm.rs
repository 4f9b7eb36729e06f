//! LayerNorm and RMSNorm over the last dimension, with recorded backwards for the
//! input and the affine parameters.
//!
//! The affine parameters may be shorter than the normalised width, as long as they
//! divide it: element `i` of a row uses `gamma[i % len]`. That is the "norm over
//! patches and channels with a per-channel affine" some connectors need: reshape
//! `B×L×N×d` to `B×L×(N·d)` and pass `d`-long parameters.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::kernel::{dispatch, for_each_row, parallel, Kernel, Real, ROW_BLOCK};
use super::{cast_like, is_cpu, needs_grad};

/// LayerNorm over the last dimension: `(x − μ)/√(σ² + eps) · γ + β`.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let width = x.dim(D::Minus1)?;
    let (gamma, beta) = (&cast_like(gamma, x)?, &cast_like(beta, x)?);
    check_affine("layer_norm", x, gamma, width)?;
    check_affine("layer_norm", x, beta, width)?;
    if is_cpu(x) {
        x.contiguous()?.apply_op3(
            &gamma.contiguous()?,
            &beta.contiguous()?,
            LayerNormOp { eps },
        )
    } else if x.device().is_cuda() {
        super::fused::layer_norm(x, gamma, beta, eps)
    } else {
        reference::layer_norm(x, gamma, beta, eps)
    }
}

/// RMSNorm over the last dimension: `x/√(mean(x²) + eps) · γ`.
pub fn rms_norm(x: &Tensor, gamma: &Tensor, eps: f64) -> Result<Tensor> {
    let width = x.dim(D::Minus1)?;
    let gamma = &cast_like(gamma, x)?;
    check_affine("rms_norm", x, gamma, width)?;
    if is_cpu(x) {
        x.contiguous()?
            .apply_op2(&gamma.contiguous()?, RmsNormOp { eps })
    } else if x.device().is_cuda() {
        super::fused::rms_norm(x, gamma, eps)
    } else {
        reference::rms_norm(x, gamma, eps)
    }
}

fn check_affine(op: &str, x: &Tensor, p: &Tensor, width: usize) -> Result<()> {
    let len = p.dims1()?;
    if len == 0 || !width.is_multiple_of(len) {
        bail!(
            "{op}: parameter of shape {:?} does not fit input of shape {:?} (its length must divide {width})",
            p.dims(),
            x.dims()
        );
    }
    Ok(())
}

/// Compositions of candle ops with known-good backwards: test oracles and the path
/// on devices without a fused kernel.
pub mod reference {
    use super::*;

    pub(crate) fn tile(p: &Tensor, width: usize) -> Result<Tensor> {
        let len = p.dim(0)?;
        if len == width {
            Ok(p.clone())
        } else {
            Tensor::cat(&vec![p; width / len], 0)
        }
    }

    pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
        let width = x.dim(D::Minus1)?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
        normed
            .broadcast_mul(&tile(gamma, width)?)?
            .broadcast_add(&tile(beta, width)?)
    }

    pub fn rms_norm(x: &Tensor, gamma: &Tensor, eps: f64) -> Result<Tensor> {
        let width = x.dim(D::Minus1)?;
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        x.broadcast_div(&(ms + eps)?.sqrt()?)?
            .broadcast_mul(&tile(gamma, width)?)
    }
}

/// Mean and reciprocal standard deviation of a row (mean forced to zero for RMS).
fn moments<T: Real>(row: &[T], eps: T, centered: bool) -> (T, T) {
    let n = T::from_f64(row.len() as f64);
    let mean = if centered {
        row.iter().copied().sum::<T>() / n
    } else {
        T::zero()
    };
    let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<T>() / n;
    (mean, (var + eps).sqrt().recip())
}

struct NormFwd {
    width: usize,
    eps: f64,
    centered: bool,
}

impl Kernel<3> for NormFwd {
    const NAME: &'static str = "norm";
    fn run<T: Real>(&self, [x, gamma, beta]: [&[T]; 3]) -> Result<Vec<T>> {
        let (w, p) = (self.width, gamma.len());
        let eps = T::from_f64(self.eps);
        let mut out = vec![T::zero(); x.len()];
        for_each_row(&mut out, w, |r, row| {
            let xr = &x[r * w..(r + 1) * w];
            let (mean, rstd) = moments(xr, eps, self.centered);
            for i in 0..w {
                let b = if self.centered {
                    beta[i % p]
                } else {
                    T::zero()
                };
                row[i] = (xr[i] - mean) * rstd * gamma[i % p] + b;
            }
        });
        Ok(out)
    }
}

impl Kernel<2> for NormFwd {
    const NAME: &'static str = "rms-norm";
    fn run<T: Real>(&self, [x, gamma]: [&[T]; 2]) -> Result<Vec<T>> {
        Kernel::<3>::run(self, [x, gamma, gamma])
    }
}

/// Backward of both norms in one pass. Output is packed: `rows` rows of `dx`, then
/// one row of `dγ` and (LayerNorm only) one row of `dβ`, each padded to the row width.
struct NormBwd {
    width: usize,
    eps: f64,
    centered: bool,
}

impl Kernel<3> for NormBwd {
    const NAME: &'static str = "norm-backward";
    fn run<T: Real>(&self, [x, gamma, g]: [&[T]; 3]) -> Result<Vec<T>> {
        let (w, p) = (self.width, gamma.len());
        let rows = x.len() / w;
        let eps = T::from_f64(self.eps);
        let n = T::from_f64(w as f64);
        let mut dx = vec![T::zero(); x.len()];
        // Each block of rows writes its dx and returns its partial dγ, dβ (length p
        // each), summed afterwards in block order: deterministic for any thread count.
        let block = |(bi, out): (usize, &mut [T])| -> Vec<T> {
            let mut partial = vec![T::zero(); 2 * p];
            for (j, row_out) in out.chunks_mut(w).enumerate() {
                let r = bi * ROW_BLOCK + j;
                let (xr, gr) = (&x[r * w..(r + 1) * w], &g[r * w..(r + 1) * w]);
                let (mean, rstd) = moments(xr, eps, self.centered);
                let mut mean_gg = T::zero();
                let mut mean_gg_xhat = T::zero();
                for i in 0..w {
                    let xhat = (xr[i] - mean) * rstd;
                    let gg = gr[i] * gamma[i % p];
                    mean_gg = mean_gg + gg;
                    mean_gg_xhat = mean_gg_xhat + gg * xhat;
                    partial[i % p] = partial[i % p] + gr[i] * xhat;
                    partial[p + i % p] = partial[p + i % p] + gr[i];
                }
                mean_gg = mean_gg / n;
                mean_gg_xhat = mean_gg_xhat / n;
                for i in 0..w {
                    let xhat = (xr[i] - mean) * rstd;
                    let gg = gr[i] * gamma[i % p];
                    let centered_term = if self.centered { mean_gg } else { T::zero() };
                    row_out[i] = rstd * (gg - centered_term - xhat * mean_gg_xhat);
                }
            }
            partial
        };
        let partials: Vec<Vec<T>> = if parallel(x.len()) {
            dx.par_chunks_mut(ROW_BLOCK * w)
                .enumerate()
                .map(block)
                .collect()
        } else {
            dx.chunks_mut(ROW_BLOCK * w)
                .enumerate()
                .map(block)
                .collect()
        };
        let mut param_grads = vec![T::zero(); 2 * p];
        for part in partials {
            for (a, b) in param_grads.iter_mut().zip(part) {
                *a = *a + b;
            }
        }
        let mut out = dx;
        debug_assert_eq!(out.len(), rows * w);
        // Pack dγ and dβ as two extra rows (zero-padded to width w).
        for k in 0..2 {
            let mut extra = vec![T::zero(); w];
            extra[..p].copy_from_slice(&param_grads[k * p..(k + 1) * p]);
            out.extend(extra);
        }
        Ok(out)
    }
}

/// Unpacks the output of [`NormBwd`].
fn unpack_norm_grads(
    packed: &Tensor,
    x: &Tensor,
    param_len: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    let w = x.dim(D::Minus1)?;
    let rows = x.elem_count() / w;
    let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
    let dgamma = packed.get(rows)?.narrow(0, 0, param_len)?;
    let dbeta = packed.get(rows + 1)?.narrow(0, 0, param_len)?;
    Ok((dx, dgamma, dbeta))
}

fn packed_shape(x: &Layout) -> Shape {
    let w = *x.dims().last().unwrap_or(&1);
    let rows = x.shape().elem_count() / w.max(1);
    Shape::from((rows + 2, w))
}

struct LayerNormOp {
    eps: f64,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "vlmkit-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let k = NormFwd {
            width: *l1.dims().last().unwrap_or(&1),
            eps: self.eps,
            centered: true,
        };
        Ok((
            dispatch(&k, [(s1, l1), (s2, l2), (s3, l3)])?,
            l1.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(
            gamma,
            &grad.contiguous()?,
            &NormBwdOp {
                eps: self.eps,
                centered: true,
            },
        )?;
        let (dx, dgamma, dbeta) = unpack_norm_grads(&packed, x, gamma.dim(0)?)?;
        Ok((
            needs_grad(x).then_some(dx),
            needs_grad(gamma).then_some(dgamma),
            needs_grad(beta).then_some(dbeta),
        ))
    }
}

struct RmsNormOp {
    eps: f64,
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "vlmkit-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let k = NormFwd {
            width: *l1.dims().last().unwrap_or(&1),
            eps: self.eps,
            centered: false,
        };
        Ok((dispatch(&k, [(s1, l1), (s2, l2)])?, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(
            gamma,
            &grad.contiguous()?,
            &NormBwdOp {
                eps: self.eps,
                centered: false,
            },
        )?;
        let (dx, dgamma, _) = unpack_norm_grads(&packed, x, gamma.dim(0)?)?;
        Ok((
            needs_grad(x).then_some(dx),
            needs_grad(gamma).then_some(dgamma),
        ))
    }
}

struct NormBwdOp {
    eps: f64,
    centered: bool,
}

impl CustomOp3 for NormBwdOp {
    fn name(&self) -> &'static str {
        "vlmkit-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let k = NormBwd {
            width: *l1.dims().last().unwrap_or(&1),
            eps: self.eps,
            centered: self.centered,
        };
        Ok((
            dispatch(&k, [(s1, l1), (s2, l2), (s3, l3)])?,
            packed_shape(l1),
        ))
    }
}
