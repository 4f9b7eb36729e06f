//! Plumbing shared by the CPU kernels of the custom ops: dtype dispatch, contiguous
//! slices, and a row-parallel loop whose result does not depend on the thread count.
//!
//! Kernels are written once, generic over `f32`/`f64`. Half-precision inputs are
//! widened to `f32` for the computation and narrowed on the way out, so that softmax
//! statistics and norm moments are always accumulated in at least single precision.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Layout, Result};
use half::{bf16, f16};
use num_traits::Float;
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Element types the kernels compute in.
pub(crate) trait Real: Float + Send + Sync + std::iter::Sum + 'static {
    fn from_f64(v: f64) -> Self;
    fn erf(self) -> Self;
}

impl Real for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn erf(self) -> Self {
        libm::erff(self)
    }
}

impl Real for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn erf(self) -> Self {
        libm::erf(self)
    }
}

/// The slice a contiguous layout covers.
pub(crate) fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!(
            "{what}: input must be contiguous (got strides {:?})",
            layout.stride()
        ),
    }
}

/// Rows of `width` elements are processed in fixed-size blocks so that any reduction
/// across rows is summed in the same order whatever the number of threads: training
/// is bit-reproducible on a given machine.
pub(crate) const ROW_BLOCK: usize = 64;

/// Below this many elements the rayon hand-off costs more than it saves.
const PARALLEL_MIN_ELEMS: usize = 1 << 15;

static INTRA_OP_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets how many threads one kernel may use (`0`: rayon's pool decides). Data-
/// parallel trainers that run several graphs at once set `1`.
pub fn set_intra_op_threads(threads: usize) {
    INTRA_OP_THREADS.store(threads, Ordering::Relaxed);
}

/// Whether a kernel over `elems` elements should split across threads.
pub(crate) fn parallel(elems: usize) -> bool {
    elems >= PARALLEL_MIN_ELEMS
        && INTRA_OP_THREADS.load(Ordering::Relaxed) != 1
        && rayon::current_num_threads() > 1
}

/// Runs `f(row_index, row_out)` over the rows of `out`, in parallel when worthwhile.
pub(crate) fn for_each_row<T: Send>(
    out: &mut [T],
    width: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    if width == 0 {
        return;
    }
    if parallel(out.len()) {
        out.par_chunks_mut(width)
            .enumerate()
            .for_each(|(r, row)| f(r, row));
    } else {
        out.chunks_mut(width)
            .enumerate()
            .for_each(|(r, row)| f(r, row));
    }
}

/// A kernel over N contiguous inputs producing one contiguous output, written once
/// for any [`Real`] type.
pub(crate) trait Kernel<const N: usize> {
    const NAME: &'static str;
    fn run<T: Real>(&self, inputs: [&[T]; N]) -> Result<Vec<T>>;
}

fn widen<T: Copy>(v: &[T], f: impl Fn(T) -> f32) -> Vec<f32> {
    v.iter().map(|&x| f(x)).collect()
}

/// Runs `kernel` on CPU storages of one float dtype. Half types compute in `f32`.
pub(crate) fn dispatch<K: Kernel<N>, const N: usize>(
    kernel: &K,
    inputs: [(&CpuStorage, &Layout); N],
) -> Result<CpuStorage> {
    let dtype = inputs[0].0.dtype();
    for (s, _) in inputs.iter() {
        if s.dtype() != dtype {
            bail!("{}: mixed dtypes {:?} and {:?}", K::NAME, dtype, s.dtype());
        }
    }
    macro_rules! slices {
        ($variant:ident) => {{
            let mut out: Vec<&[_]> = Vec::with_capacity(N);
            for (s, l) in inputs.iter() {
                match s {
                    CpuStorage::$variant(v) => out.push(contiguous(v, l, K::NAME)?),
                    _ => unreachable!(),
                }
            }
            out
        }};
    }
    fn arr<T, const N: usize>(v: Vec<&[T]>) -> [&[T]; N] {
        match v.try_into() {
            Ok(a) => a,
            Err(_) => unreachable!("one slice per input"),
        }
    }
    match dtype {
        candle_core::DType::F32 => Ok(CpuStorage::F32(kernel.run(arr(slices!(F32)))?)),
        candle_core::DType::F64 => Ok(CpuStorage::F64(kernel.run(arr(slices!(F64)))?)),
        candle_core::DType::BF16 => {
            let wide: Vec<Vec<f32>> = slices!(BF16)
                .into_iter()
                .map(|s: &[bf16]| widen(s, bf16::to_f32))
                .collect();
            let refs: Vec<&[f32]> = wide.iter().map(|v| v.as_slice()).collect();
            let out = kernel.run(arr(refs))?;
            Ok(CpuStorage::BF16(
                out.into_iter().map(bf16::from_f32).collect(),
            ))
        }
        candle_core::DType::F16 => {
            let wide: Vec<Vec<f32>> = slices!(F16)
                .into_iter()
                .map(|s: &[f16]| widen(s, f16::to_f32))
                .collect();
            let refs: Vec<&[f32]> = wide.iter().map(|v| v.as_slice()).collect();
            let out = kernel.run(arr(refs))?;
            Ok(CpuStorage::F16(
                out.into_iter().map(f16::from_f32).collect(),
            ))
        }
        other => bail!("{}: unsupported dtype {other:?}", K::NAME),
    }
}
