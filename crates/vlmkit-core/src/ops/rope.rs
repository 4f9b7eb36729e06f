//! Rotary position embeddings in the Hugging Face LLaMA convention ("rotate half":
//! element `i` pairs with element `i + D/2`), with a recorded backward.
//!
//! Applied in the `B×T×H×D` layout the q/k projections produce, so no transpose copy
//! is needed first. `cos`/`sin` are `T×D/2` (shared positions) or `B×T×D/2` (per-
//! sample positions, for left-padded batches and KV-cached decoding).

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, D};

use super::kernel::{dispatch, for_each_row, Kernel, Real};
use super::{cast_like, is_cpu, needs_grad};

/// Rotates `x` (`B×T×H×D`) by the angles whose cosines and sines are given.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, t, _h, d) = x.dims4()?;
    check_table(x, cos, b, t, d)?;
    check_table(x, sin, b, t, d)?;
    let (cos, sin) = (cast_like(cos, x)?.detach(), cast_like(sin, x)?.detach());
    if is_cpu(x) {
        x.contiguous()?
            .apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope)
    } else if x.device().is_cuda() {
        super::fused::rope(x, &cos, &sin)
    } else {
        reference::rope(x, &cos, &sin)
    }
}

fn check_table(x: &Tensor, table: &Tensor, b: usize, t: usize, d: usize) -> Result<()> {
    let ok = match table.dims() {
        [tt, h] => *tt == t && *h * 2 == d,
        [bb, tt, h] => *bb == b && *tt == t && *h * 2 == d,
        _ => false,
    };
    if !ok || !d.is_multiple_of(2) {
        bail!(
            "rope: table of shape {:?} does not fit input of shape {:?} (expected {t}×{} or {b}×{t}×{})",
            table.dims(),
            x.dims(),
            d / 2,
            d / 2
        );
    }
    Ok(())
}

/// The rotate-half composition: test oracle and path on other devices.
pub mod reference {
    use super::*;

    pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (b, t, _h, d) = x.dims4()?;
        let expand = |table: &Tensor| -> Result<Tensor> {
            let table = table.to_dtype(x.dtype())?;
            let full = Tensor::cat(&[&table, &table], D::Minus1)?;
            // → B×T×1×D (or 1×T×1×D) to broadcast over heads.
            match full.rank() {
                2 => full.reshape((1, t, 1, d)),
                _ => full.reshape((b, t, 1, d)),
            }
        };
        let (cos, sin) = (expand(cos)?, expand(sin)?);
        let x1 = x.narrow(D::Minus1, 0, d / 2)?;
        let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
    }
}

struct RopeKernel {
    dims: (usize, usize, usize, usize),
    batched_table: bool,
    /// Rotate by the negative angle (the backward: the rotation's transpose).
    inverse: bool,
}

impl Kernel<3> for RopeKernel {
    const NAME: &'static str = "rope";
    fn run<T: Real>(&self, [x, cos, sin]: [&[T]; 3]) -> Result<Vec<T>> {
        let (_b, t, h, d) = self.dims;
        let half = d / 2;
        let mut out = vec![T::zero(); x.len()];
        // One "row" = all heads of one (batch, position).
        for_each_row(&mut out, h * d, |r, row| {
            let (bi, ti) = (r / t, r % t);
            let table_row = if self.batched_table { bi * t + ti } else { ti };
            let c = &cos[table_row * half..(table_row + 1) * half];
            let s = &sin[table_row * half..(table_row + 1) * half];
            let xr = &x[r * h * d..(r + 1) * h * d];
            for head in 0..h {
                let base = head * d;
                for i in 0..half {
                    let (x1, x2) = (xr[base + i], xr[base + i + half]);
                    let si = if self.inverse { -s[i] } else { s[i] };
                    row[base + i] = x1 * c[i] - x2 * si;
                    row[base + i + half] = x2 * c[i] + x1 * si;
                }
            }
        });
        Ok(out)
    }
}

struct Rope;

impl Rope {
    fn kernel(l_x: &Layout, l_cos: &Layout, inverse: bool) -> Result<RopeKernel> {
        Ok(RopeKernel {
            dims: l_x.shape().dims4()?,
            batched_table: l_cos.dims().len() == 3,
            inverse,
        })
    }
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "vlmkit-rope"
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
        let k = Rope::kernel(l1, l2, false)?;
        Ok((
            dispatch(&k, [(s1, l1), (s2, l2), (s3, l3)])?,
            l1.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if !needs_grad(x) {
            return Ok((None, None, None));
        }
        let dx = grad
            .contiguous()?
            .apply_op3_no_bwd(cos, sin, &RopeInverse)?;
        Ok((Some(dx), None, None))
    }
}

struct RopeInverse;

impl CustomOp3 for RopeInverse {
    fn name(&self) -> &'static str {
        "vlmkit-rope-inverse"
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
        let k = Rope::kernel(l1, l2, true)?;
        Ok((
            dispatch(&k, [(s1, l1), (s2, l2), (s3, l3)])?,
            l1.shape().clone(),
        ))
    }
}

/// Cosine and sine tables for `positions` (`B×T`, or `T`), `head_dim`, `theta`:
/// `angle[p, i] = p · theta^(−2i/head_dim)`. Returned in `dtype`, on `positions`' device.
pub fn rope_tables(
    positions: &Tensor,
    head_dim: usize,
    theta: f64,
    dtype: candle_core::DType,
) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| (1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)) as f32)
        .collect();
    let inv_freq = Tensor::from_vec(inv_freq, (1, half), positions.device())?;
    let pos = positions.to_dtype(candle_core::DType::F32)?;
    let shape = pos.dims().to_vec();
    let flat = pos.flatten_all()?.unsqueeze(1)?; // (P, 1)
    let angles = flat.broadcast_mul(&inv_freq)?; // (P, half)
    let mut out_shape = shape;
    out_shape.push(half);
    let cos = angles.cos()?.reshape(out_shape.clone())?.to_dtype(dtype)?;
    let sin = angles.sin()?.reshape(out_shape)?.to_dtype(dtype)?;
    Ok((cos, sin))
}
