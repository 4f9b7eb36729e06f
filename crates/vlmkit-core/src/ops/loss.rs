//! Cross-entropy with ignored labels, fused (log-sum-exp forward, softmax-minus-one-
//! hot backward), so the `N×V` log-probabilities are never materialised.

use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use super::kernel::{dispatch, for_each_row, Kernel, Real};
use super::{is_cpu, needs_grad};

/// Label value that marks a position as not supervised (the Hugging Face convention).
pub const IGNORE_INDEX: i64 = -100;

/// Mean negative log-likelihood of `labels` under `logits` (`N×V`), over the rows
/// whose label is not [`IGNORE_INDEX`]. Returns a scalar.
///
/// A batch with no supervised row is an error: averaging over nothing would train on
/// a silent zero.
pub fn cross_entropy(logits: &Tensor, labels: &[i64]) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if labels.len() != n {
        bail!(
            "cross_entropy: {} labels for logits of shape {:?}",
            labels.len(),
            logits.dims()
        );
    }
    let mut count = 0usize;
    for (row, &label) in labels.iter().enumerate() {
        if label == IGNORE_INDEX {
            continue;
        }
        if label < 0 || label as usize >= v {
            bail!("cross_entropy: label {label} at row {row} is outside the vocabulary of {v}");
        }
        count += 1;
    }
    if count == 0 {
        bail!("cross_entropy: no supervised position (every label is {IGNORE_INDEX})");
    }
    let labels = Arc::new(labels.to_vec());
    if is_cpu(logits) {
        logits
            .contiguous()?
            .apply_op1(CrossEntropy { labels, count })
    } else {
        reference::cross_entropy(logits, &labels)
    }
}

/// The composition through log-softmax and a one-hot product.
pub mod reference {
    use super::*;

    pub fn cross_entropy(logits: &Tensor, labels: &[i64]) -> Result<Tensor> {
        let (n, v) = logits.dims2()?;
        let mut onehot = vec![0f32; n * v];
        let mut count = 0usize;
        for (row, &label) in labels.iter().enumerate() {
            if label != IGNORE_INDEX {
                onehot[row * v + label as usize] = 1.0;
                count += 1;
            }
        }
        let onehot = Tensor::from_vec(onehot, (n, v), logits.device())?.to_dtype(logits.dtype())?;
        let logp = super::super::softmax::reference::log_softmax_last_dim(logits)?;
        let nll = (logp * onehot)?.sum_all()?.neg()?;
        nll / count as f64
    }
}

struct CrossEntropy {
    labels: Arc<Vec<i64>>,
    count: usize,
}

struct CeForward<'a> {
    labels: &'a [i64],
    width: usize,
    count: usize,
}

impl Kernel<1> for CeForward<'_> {
    const NAME: &'static str = "cross-entropy";
    fn run<T: Real>(&self, [x]: [&[T]; 1]) -> Result<Vec<T>> {
        let w = self.width;
        let mut total = 0f64;
        for (row, &label) in self.labels.iter().enumerate() {
            if label == IGNORE_INDEX {
                continue;
            }
            let xr = &x[row * w..(row + 1) * w];
            let max = xr.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
            let lse = xr.iter().map(|&v| (v - max).exp()).sum::<T>().ln() + max;
            total += (lse - xr[label as usize]).to_f64().unwrap_or(f64::NAN);
        }
        Ok(vec![T::from_f64(total / self.count as f64)])
    }
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "vlmkit-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let k = CeForward {
            labels: &self.labels,
            width: *l.dims().last().unwrap_or(&1),
            count: self.count,
        };
        Ok((dispatch(&k, [(s, l)])?, Shape::from(())))
    }

    fn bwd(&self, logits: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if !needs_grad(logits) {
            return Ok(None);
        }
        let g = grad.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        Ok(Some(logits.apply_op1_no_bwd(&CrossEntropyGrad {
            labels: self.labels.clone(),
            scale: g / self.count as f64,
        })?))
    }
}

struct CrossEntropyGrad {
    labels: Arc<Vec<i64>>,
    scale: f64,
}

struct CeBackward<'a> {
    labels: &'a [i64],
    width: usize,
    scale: f64,
}

impl Kernel<1> for CeBackward<'_> {
    const NAME: &'static str = "cross-entropy-grad";
    fn run<T: Real>(&self, [x]: [&[T]; 1]) -> Result<Vec<T>> {
        let w = self.width;
        let scale = T::from_f64(self.scale);
        let mut out = vec![T::zero(); x.len()];
        for_each_row(&mut out, w, |row, o| {
            let label = self.labels[row];
            if label == IGNORE_INDEX {
                return;
            }
            let xr = &x[row * w..(row + 1) * w];
            let max = xr.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
            let mut sum = T::zero();
            for (oi, &v) in o.iter_mut().zip(xr) {
                *oi = (v - max).exp();
                sum = sum + *oi;
            }
            let inv = scale / sum;
            o.iter_mut().for_each(|oi| *oi = *oi * inv);
            o[label as usize] = o[label as usize] - scale;
        });
        Ok(out)
    }
}

impl CustomOp1 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "vlmkit-cross-entropy-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let k = CeBackward {
            labels: &self.labels,
            width: *l.dims().last().unwrap_or(&1),
            scale: self.scale,
        };
        Ok((dispatch(&k, [(s, l)])?, l.shape().clone()))
    }
}

/// Log-probability of each label (`N`), `0` where the label is ignored; no gradient.
/// Used by evaluation to score answers.
pub fn label_log_probs(logits: &Tensor, labels: &[i64]) -> Result<Vec<f32>> {
    let logp = super::softmax::log_softmax_last_dim(&logits.detach())?
        .to_dtype(DType::F32)?
        .to_device(&candle_core::Device::Cpu)?;
    let rows = logp.to_vec2::<f32>()?;
    Ok(rows
        .iter()
        .zip(labels)
        .map(|(r, &l)| {
            if l == IGNORE_INDEX {
                0.0
            } else {
                r[l as usize]
            }
        })
        .collect())
}
