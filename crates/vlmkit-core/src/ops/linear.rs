//! `y = x·Wᵀ + b` whose backward computes only the gradients somebody needs.
//!
//! candle's matmul backward always computes both operands' gradients. For a frozen
//! weight that is a full extra matmul per layer per step, thrown away (and a
//! zero-initialised buffer to hold it). This op asks each operand whether it takes
//! part in the graph first: a frozen weight (a plain tensor, not a `Var`) costs no
//! gradient work, while the gradient still flows through it to trainable inputs.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::{cast_like, is_cpu, needs_grad};

/// `x·Wᵀ + b` for `x` of shape `…×in`, `W` of shape `out×in`, `b` of shape `out`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (out_dim, in_dim) = weight.dims2()?;
    let dims = x.dims();
    if dims.last() != Some(&in_dim) {
        bail!(
            "linear: input of shape {:?} does not fit weight of shape {:?} (last input dim must be {in_dim})",
            dims,
            weight.dims()
        );
    }
    if let Some(b) = bias {
        if b.dims() != [out_dim] {
            bail!(
                "linear: bias of shape {:?} does not fit weight of shape {:?}",
                b.dims(),
                weight.dims()
            );
        }
    }
    let weight = &cast_like(weight, x)?;
    let bias = bias.map(|b| cast_like(b, x)).transpose()?;
    let bias = bias.as_ref();
    let rows = x.elem_count() / in_dim;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("rank ≥ 1") = out_dim;
    let x2 = x.contiguous()?.reshape((rows, in_dim))?;
    let y = if is_cpu(x) {
        let w = weight.contiguous()?;
        match bias {
            Some(b) => x2.apply_op3(&w, &b.contiguous()?, Linear)?,
            None => x2.apply_op2(&w, Linear)?,
        }
    } else {
        reference::linear(&x2, weight, bias)?
    };
    y.reshape(out_dims)
}

/// The composition through candle's matmul: test oracle and path on other devices.
pub mod reference {
    use super::*;

    pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let y = matmul(x, &weight.t()?)?;
        match bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Matrix product that also works for bf16 on the CPU (candle's CPU gemm has no bf16
/// path: compute in f32 and round once).
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if is_cpu(a) && a.dtype() == DType::BF16 {
        a.to_dtype(DType::F32)?
            .matmul(&b.to_dtype(DType::F32)?)?
            .to_dtype(DType::BF16)
    } else {
        a.matmul(b)
    }
}

struct Linear;

impl Linear {
    fn forward_cpu(
        x: &CpuStorage,
        l_x: &Layout,
        w: &CpuStorage,
        l_w: &Layout,
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l_x.shape().dims2()?;
        let (n, _) = l_w.shape().dims2()?;
        let dtype = x.dtype();
        // CPU gemm has no bf16 kernel: widen, multiply, narrow.
        let widen = dtype == DType::BF16;
        let (xs, ws);
        let (x, w) = if widen {
            xs = x.to_dtype(l_x, DType::F32)?;
            ws = w.to_dtype(l_w, DType::F32)?;
            (&xs, &ws)
        } else {
            (x, w)
        };
        let l_x = if widen {
            Layout::contiguous(l_x.shape().clone())
        } else {
            l_x.clone()
        };
        let l_w = if widen {
            Layout::contiguous(l_w.shape().clone())
        } else {
            l_w.clone()
        };
        let mut y = x.matmul(w, (1, m, n, k), &l_x, &l_w.transpose(0, 1)?)?;
        if let Some((b, l_b)) = bias {
            add_bias(&mut y, b, l_b, n)?;
        }
        let y = if widen {
            y.to_dtype(&Layout::contiguous((m, n)), DType::BF16)?
        } else {
            y
        };
        Ok((y, Shape::from((m, n))))
    }
}

fn add_bias(y: &mut CpuStorage, b: &CpuStorage, l_b: &Layout, n: usize) -> Result<()> {
    fn add<T: Copy + std::ops::AddAssign>(y: &mut [T], b: &[T], n: usize) {
        for row in y.chunks_mut(n) {
            for (v, &bb) in row.iter_mut().zip(b) {
                *v += bb;
            }
        }
    }
    let (start, end) = match l_b.contiguous_offsets() {
        Some(o) => o,
        None => bail!("linear: bias must be contiguous"),
    };
    match (y, b) {
        (CpuStorage::F32(y), CpuStorage::F32(b)) => add(y, &b[start..end], n),
        (CpuStorage::F64(y), CpuStorage::F64(b)) => add(y, &b[start..end], n),
        (CpuStorage::F16(y), CpuStorage::F16(b)) => add(y, &b[start..end], n),
        (CpuStorage::F32(y), CpuStorage::BF16(b)) => {
            let b: Vec<f32> = b[start..end].iter().map(|v| v.to_f32()).collect();
            add(y, &b, n)
        }
        (y, b) => bail!(
            "linear: unsupported dtypes {:?} / {:?}",
            y.dtype(),
            b.dtype()
        ),
    }
    Ok(())
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "vlmkit-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Linear::forward_cpu(s1, l1, s2, l2, None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = linear_backward(x, w, None, grad)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "vlmkit-linear-bias"
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
        Linear::forward_cpu(s1, l1, s2, l2, Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        linear_backward(x, w, Some(b), grad)
    }
}

type LinearGrads = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

fn linear_backward(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    grad: &Tensor,
) -> Result<LinearGrads> {
    let dx = if needs_grad(x) {
        Some(matmul(grad, w)?)
    } else {
        None
    };
    let dw = if needs_grad(w) {
        Some(matmul(&grad.t()?, x)?)
    } else {
        None
    };
    let db = match b {
        Some(b) if needs_grad(b) => Some(grad.sum(0)?),
        _ => None,
    };
    Ok((dx, dw, db))
}
