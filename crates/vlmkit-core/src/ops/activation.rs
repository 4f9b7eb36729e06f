//! Element-wise activations (GELU in its exact and tanh forms, CLIP's quick GELU,
//! SiLU, ReLU) and the SwiGLU gate, each a fused kernel with a fused backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use serde::{Deserialize, Serialize};

use super::kernel::{dispatch, Kernel, Real};
use super::{is_cpu, needs_grad};

/// An activation function, named as Hugging Face configs name them (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact GELU, `x·Φ(x)` with the erf form (HF `"gelu"`).
    #[default]
    Gelu,
    /// The tanh approximation (HF `"gelu_pytorch_tanh"` / `"gelu_new"`).
    #[serde(alias = "gelu_new")]
    GeluPytorchTanh,
    /// CLIP's `x·σ(1.702x)`.
    QuickGelu,
    /// `x·σ(x)`.
    Silu,
    Relu,
}

impl Activation {
    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        if is_cpu(x) {
            x.contiguous()?.apply_op1(ActOp(self))
        } else {
            reference::activation(self, x)
        }
    }

    fn value<T: Real>(self, x: T) -> T {
        let one = T::one();
        let half = T::from_f64(0.5);
        match self {
            Activation::Gelu => {
                half * x * (one + (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf())
            }
            Activation::GeluPytorchTanh => {
                let inner = T::from_f64(GELU_TANH_C) * (x + T::from_f64(0.044715) * x * x * x);
                half * x * (one + inner.tanh())
            }
            Activation::QuickGelu => x * sigmoid(T::from_f64(1.702) * x),
            Activation::Silu => x * sigmoid(x),
            Activation::Relu => x.max(T::zero()),
        }
    }

    fn derivative<T: Real>(self, x: T) -> T {
        let one = T::one();
        let half = T::from_f64(0.5);
        match self {
            Activation::Gelu => {
                let cdf = half * (one + (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf());
                let pdf = (-(x * x) * half).exp() * T::from_f64(INV_SQRT_2PI);
                cdf + x * pdf
            }
            Activation::GeluPytorchTanh => {
                let c = T::from_f64(GELU_TANH_C);
                let a = T::from_f64(0.044715);
                let t = (c * (x + a * x * x * x)).tanh();
                half * (one + t)
                    + half * x * (one - t * t) * c * (one + T::from_f64(3.0) * a * x * x)
            }
            Activation::QuickGelu => {
                let k = T::from_f64(1.702);
                let s = sigmoid(k * x);
                s + k * x * s * (one - s)
            }
            Activation::Silu => {
                let s = sigmoid(x);
                s * (one + x * (one - s))
            }
            Activation::Relu => {
                if x > T::zero() {
                    one
                } else {
                    T::zero()
                }
            }
        }
    }
}

const GELU_TANH_C: f64 = 0.797_884_560_802_865_4; // √(2/π)
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

fn sigmoid<T: Real>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

/// `silu(gate) ⊙ up`, the gated feed-forward of LLaMA-family models.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.shape() != up.shape() {
        candle_core::bail!(
            "swiglu: gate of shape {:?} and up of shape {:?} differ",
            gate.dims(),
            up.dims()
        );
    }
    if is_cpu(gate) {
        gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGluOp)
    } else {
        reference::swiglu(gate, up)
    }
}

/// Compositions of candle ops: test oracles and the path on other devices.
pub mod reference {
    use super::*;

    pub fn activation(act: Activation, x: &Tensor) -> Result<Tensor> {
        match act {
            Activation::Gelu => {
                // 0.5·x·(1 + erf(x/√2)), through candle's erf whose backward is exact.
                let erf = (x * std::f64::consts::FRAC_1_SQRT_2)?.erf()?;
                (x * 0.5)?.mul(&(erf + 1.0)?)
            }
            Activation::GeluPytorchTanh => {
                let inner = ((x + (x.powf(3.0)? * 0.044715)?)? * GELU_TANH_C)?.tanh()?;
                (x * 0.5)?.mul(&(inner + 1.0)?)
            }
            Activation::QuickGelu => x.mul(&sigmoid_t(&(x * 1.702)?)?),
            Activation::Silu => x.mul(&sigmoid_t(x)?),
            Activation::Relu => x.relu(),
        }
    }

    fn sigmoid_t(x: &Tensor) -> Result<Tensor> {
        (x.neg()?.exp()? + 1.0)?.recip()
    }

    pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        activation(Activation::Silu, gate)?.mul(up)
    }
}

struct ActKernel(Activation);

impl Kernel<1> for ActKernel {
    const NAME: &'static str = "activation";
    fn run<T: Real>(&self, [x]: [&[T]; 1]) -> Result<Vec<T>> {
        Ok(x.iter().map(|&v| self.0.value(v)).collect())
    }
}

impl Kernel<2> for ActKernel {
    const NAME: &'static str = "activation-grad";
    fn run<T: Real>(&self, [x, g]: [&[T]; 2]) -> Result<Vec<T>> {
        Ok(x.iter()
            .zip(g)
            .map(|(&v, &g)| g * self.0.derivative(v))
            .collect())
    }
}

struct ActOp(Activation);

impl CustomOp1 for ActOp {
    fn name(&self) -> &'static str {
        "vlmkit-activation"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch(&ActKernel(self.0), [(s, l)])?, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if !needs_grad(arg) {
            return Ok(None);
        }
        Ok(Some(arg.apply_op2_no_bwd(
            &grad.contiguous()?,
            &ActGradOp(self.0),
        )?))
    }
}

struct ActGradOp(Activation);

impl CustomOp2 for ActGradOp {
    fn name(&self) -> &'static str {
        "vlmkit-activation-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((
            dispatch(&ActKernel(self.0), [(s1, l1), (s2, l2)])?,
            l1.shape().clone(),
        ))
    }
}

struct SwiGluKernel;

impl Kernel<2> for SwiGluKernel {
    const NAME: &'static str = "swiglu";
    fn run<T: Real>(&self, [gate, up]: [&[T]; 2]) -> Result<Vec<T>> {
        Ok(gate
            .iter()
            .zip(up)
            .map(|(&g, &u)| Activation::Silu.value(g) * u)
            .collect())
    }
}

/// Backward packed as `[dgate; dup]` (twice the input length).
impl Kernel<3> for SwiGluKernel {
    const NAME: &'static str = "swiglu-grad";
    fn run<T: Real>(&self, [gate, up, g]: [&[T]; 3]) -> Result<Vec<T>> {
        let mut out = Vec::with_capacity(2 * gate.len());
        out.extend(
            gate.iter()
                .zip(up)
                .zip(g)
                .map(|((&a, &u), &g)| g * u * Activation::Silu.derivative(a)),
        );
        out.extend(
            gate.iter()
                .zip(g)
                .map(|(&a, &g)| g * Activation::Silu.value(a)),
        );
        Ok(out)
    }
}

struct SwiGluOp;

impl CustomOp2 for SwiGluOp {
    fn name(&self) -> &'static str {
        "vlmkit-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((
            dispatch(&SwiGluKernel, [(s1, l1), (s2, l2)])?,
            l1.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let packed = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &SwiGluGradOp)?;
        let n = gate.elem_count();
        let dgate = packed.narrow(0, 0, n)?.reshape(gate.shape())?;
        let dup = packed.narrow(0, n, n)?.reshape(up.shape())?;
        Ok((
            needs_grad(gate).then_some(dgate),
            needs_grad(up).then_some(dup),
        ))
    }
}

struct SwiGluGradOp;

impl CustomOp3 for SwiGluGradOp {
    fn name(&self) -> &'static str {
        "vlmkit-swiglu-grad"
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
        let n = l1.shape().elem_count();
        Ok((
            dispatch(&SwiGluKernel, [(s1, l1), (s2, l2), (s3, l3)])?,
            Shape::from(2 * n),
        ))
    }
}
