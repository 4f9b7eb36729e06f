//! Depthwise 2-D convolution (one `k`×`k` filter per channel, stride 1, zero
//! "same" padding) on channels-last tensors, with a recorded backward.
//!
//! candle splits a grouped convolution into one convolution per channel, which
//! is correct but slow for ConvNeXt's 7×7 depthwise filters; the fused CPU kernel
//! here loops over channels innermost instead. Other devices use the reference
//! composition (a weighted sum of shifted copies).

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, D};

use super::kernel::{dispatch, for_each_row, Kernel, Real};
use super::{cast_like, is_cpu, needs_grad};

/// `y[b,h,w,c] = Σ_{i,j} x[b, h+i−p, w+j−p, c] · weight[c, 0, i, j]` with `p = k/2`
/// and zeros outside; `x` is `B×H×W×C`, `weight` the conv layout `C×1×k×k` (`k`
/// odd).
pub fn depthwise_conv2d(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (_b, _h, _w, c) = x.dims4()?;
    let (wc, one, k, k2) = weight.dims4()?;
    if wc != c || one != 1 || k != k2 || k % 2 == 0 {
        bail!(
            "depthwise_conv2d: kernel of shape {:?} does not fit input of shape {:?} (expected [{c}, 1, k, k] with k odd)",
            weight.dims(),
            x.dims()
        );
    }
    let weight = cast_like(weight, x)?;
    if is_cpu(x) {
        x.contiguous()?
            .apply_op2(&weight.contiguous()?, DepthwiseConv { flip: false })
    } else {
        reference::depthwise_conv2d(x, &weight)
    }
}

/// The composition through shifted copies: test oracle and path on other devices.
pub mod reference {
    use super::*;

    pub fn depthwise_conv2d(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let (_b, h, w, c) = x.dims4()?;
        let k = weight.dim(2)?;
        let pad = k / 2;
        let padded = x.pad_with_zeros(1, pad, pad)?.pad_with_zeros(2, pad, pad)?;
        let mut shifted = Vec::with_capacity(k * k);
        for dy in 0..k {
            for dx in 0..k {
                shifted.push(padded.narrow(1, dy, h)?.narrow(2, dx, w)?);
            }
        }
        let windows = Tensor::stack(&shifted, D::Minus1)?; // B×H×W×C×k²
        let taps = cast_like(weight, x)?.reshape((c, k * k))?;
        windows.broadcast_mul(&taps)?.sum(D::Minus1)
    }
}

/// The input index tap `i` of output `o` reads, with padding `p` and `n` inputs;
/// `None` where it falls in the zero padding.
fn source(o: usize, i: usize, p: usize, n: usize) -> Option<usize> {
    (o + i).checked_sub(p).filter(|&s| s < n)
}

/// The forward (and, with a flipped filter, the input gradient).
struct ConvKernel {
    dims: (usize, usize, usize, usize),
    k: usize,
    /// Use the filter rotated by 180°: the transpose of the convolution.
    flip: bool,
}

impl Kernel<2> for ConvKernel {
    const NAME: &'static str = "depthwise_conv2d";
    fn run<T: Real>(&self, [x, weight]: [&[T]; 2]) -> Result<Vec<T>> {
        let (_b, h, w, c) = self.dims;
        let (k, p) = (self.k, self.k / 2);
        // Taps laid out [i][j][channel], so the innermost loop runs over channels.
        let mut taps = vec![T::zero(); k * k * c];
        for ch in 0..c {
            for i in 0..k {
                for j in 0..k {
                    let (si, sj) = if self.flip {
                        (k - 1 - i, k - 1 - j)
                    } else {
                        (i, j)
                    };
                    taps[(i * k + j) * c + ch] = weight[ch * k * k + si * k + sj];
                }
            }
        }
        let mut out = vec![T::zero(); x.len()];
        // One row = one (batch, output row), `w·c` wide.
        for_each_row(&mut out, w * c, |r, row| {
            let (bi, oh) = (r / h, r % h);
            for i in 0..k {
                let Some(ih) = source(oh, i, p, h) else {
                    continue;
                };
                let x_row = &x[(bi * h + ih) * w * c..][..w * c];
                for j in 0..k {
                    let tap = &taps[(i * k + j) * c..][..c];
                    for ow in 0..w {
                        let Some(iw) = source(ow, j, p, w) else {
                            continue;
                        };
                        let src = &x_row[iw * c..][..c];
                        let dst = &mut row[ow * c..][..c];
                        for ((d, &s), &t) in dst.iter_mut().zip(src).zip(tap) {
                            *d = *d + s * t;
                        }
                    }
                }
            }
        });
        Ok(out)
    }
}

/// The filter gradient: `g[c,0,i,j] = Σ_{b,h,w} gy[b,h,w,c] · x[b, h+i−p, w+j−p, c]`,
/// summed in one fixed order (reproducible).
struct FilterGradKernel {
    dims: (usize, usize, usize, usize),
    k: usize,
}

impl Kernel<2> for FilterGradKernel {
    const NAME: &'static str = "depthwise_conv2d (filter gradient)";
    fn run<T: Real>(&self, [x, gy]: [&[T]; 2]) -> Result<Vec<T>> {
        let (b, h, w, c) = self.dims;
        let (k, p) = (self.k, self.k / 2);
        let mut acc = vec![T::zero(); k * k * c]; // [i][j][channel]
        for bi in 0..b {
            for oh in 0..h {
                let g_row = &gy[(bi * h + oh) * w * c..][..w * c];
                for i in 0..k {
                    let Some(ih) = source(oh, i, p, h) else {
                        continue;
                    };
                    let x_row = &x[(bi * h + ih) * w * c..][..w * c];
                    for j in 0..k {
                        let dst = &mut acc[(i * k + j) * c..][..c];
                        for ow in 0..w {
                            let Some(iw) = source(ow, j, p, w) else {
                                continue;
                            };
                            let src = &x_row[iw * c..][..c];
                            let g = &g_row[ow * c..][..c];
                            for ((d, &s), &gv) in dst.iter_mut().zip(src).zip(g) {
                                *d = *d + s * gv;
                            }
                        }
                    }
                }
            }
        }
        // Back to the conv layout [channel][i][j].
        let mut out = vec![T::zero(); c * k * k];
        for ch in 0..c {
            for ij in 0..k * k {
                out[ch * k * k + ij] = acc[ij * c + ch];
            }
        }
        Ok(out)
    }
}

/// The convolution; with `flip`, the filter rotated by 180° (the transpose of the
/// convolution: the input gradient).
struct DepthwiseConv {
    flip: bool,
}

impl CustomOp2 for DepthwiseConv {
    fn name(&self) -> &'static str {
        if self.flip {
            "vlmkit-depthwise-conv2d-transpose"
        } else {
            "vlmkit-depthwise-conv2d"
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let kernel = ConvKernel {
            dims: l1.shape().dims4()?,
            k: l2.shape().dims4()?.2,
            flip: self.flip,
        };
        Ok((dispatch(&kernel, [(s1, l1), (s2, l2)])?, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if self.flip {
            bail!("depthwise_conv2d: the transpose is a backward and has none of its own");
        }
        let grad = grad.contiguous()?;
        let dx = needs_grad(x)
            .then(|| grad.apply_op2_no_bwd(weight, &DepthwiseConv { flip: true }))
            .transpose()?;
        let dw = needs_grad(weight)
            .then(|| x.apply_op2_no_bwd(&grad, &FilterGrad { k: weight.dim(2)? }))
            .transpose()?;
        Ok((dx, dw))
    }
}

struct FilterGrad {
    k: usize,
}

impl CustomOp2 for FilterGrad {
    fn name(&self) -> &'static str {
        "vlmkit-depthwise-conv2d-filter-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = l1.shape().dims4()?;
        let kernel = FilterGradKernel { dims, k: self.k };
        let shape = Shape::from((dims.3, 1, self.k, self.k));
        Ok((dispatch(&kernel, [(s1, l1), (s2, l2)])?, shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, max_abs_diff, randn, randn_var, GradCheck};

    #[test]
    fn matches_the_reference_and_candles_grouped_convolution() {
        for (h, w, k) in [(6, 6, 7), (5, 8, 3), (1, 1, 7)] {
            let x = randn(&[2, h, w, 3], 1.0, 1).unwrap();
            let weight = randn(&[3, 1, k, k], 1.0, 2).unwrap();
            let fused = depthwise_conv2d(&x, &weight).unwrap();
            let composed = reference::depthwise_conv2d(&x, &weight).unwrap();
            assert!(
                max_abs_diff(&fused, &composed).unwrap() < 1e-12,
                "{h}×{w}, k {k}"
            );
            if h == w {
                let candle = x
                    .permute((0, 3, 1, 2))
                    .unwrap()
                    .contiguous()
                    .unwrap()
                    .conv2d(&weight, k / 2, 1, 1, 3)
                    .unwrap()
                    .permute((0, 2, 3, 1))
                    .unwrap();
                assert!(max_abs_diff(&fused, &candle).unwrap() < 1e-12);
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let x = randn_var(&[2, 5, 4, 3], 1.0, 3).unwrap();
        let weight = randn_var(&[3, 1, 3, 3], 1.0, 4).unwrap();
        let probe = randn(&[2, 5, 4, 3], 1.0, 5).unwrap();
        let loss = || (depthwise_conv2d(x.as_tensor(), weight.as_tensor())? * &probe)?.sum_all();
        check_gradients(
            &[("x", &x), ("weight", &weight)],
            loss,
            &GradCheck::default(),
        )
        .unwrap();
    }

    #[test]
    fn a_kernel_that_does_not_fit_names_both_shapes() {
        let x = randn(&[1, 4, 4, 3], 1.0, 6).unwrap();
        let weight = randn(&[3, 1, 4, 4], 1.0, 7).unwrap();
        let err = depthwise_conv2d(&x, &weight).unwrap_err().to_string();
        assert!(
            err.contains("[3, 1, 4, 4]") && err.contains("[1, 4, 4, 3]"),
            "{err}"
        );
    }
}
