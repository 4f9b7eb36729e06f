//! Finite-difference gradient checks.
//!
//! Every op and module that training uses is checked here: the analytic gradient
//! from `backward()` must match central differences of the loss, for every element
//! (or a fixed sample of elements for large parameters). Run in f64.

use candle_core::{DType, Result, Tensor, Var};

use crate::rng::Rng;

/// Tolerances and sampling for [`check_gradients`].
#[derive(Debug, Clone)]
pub struct GradCheck {
    /// Finite-difference step.
    pub eps: f64,
    pub atol: f64,
    pub rtol: f64,
    /// At most this many elements of each variable are perturbed (a fixed sample).
    pub max_elems: usize,
}

impl Default for GradCheck {
    fn default() -> Self {
        Self {
            eps: 1e-6,
            atol: 1e-6,
            rtol: 1e-4,
            max_elems: 64,
        }
    }
}

/// The worst disagreement found.
#[derive(Debug, Clone)]
pub struct GradCheckReport {
    pub checked: usize,
    pub worst: Option<Mismatch>,
}

#[derive(Debug, Clone)]
pub struct Mismatch {
    pub var: String,
    pub index: usize,
    pub analytic: f64,
    pub numeric: f64,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}[{}]: analytic {:.9e} vs numeric {:.9e}",
            self.var, self.index, self.analytic, self.numeric
        )
    }
}

/// The largest absolute element-wise difference of two tensors of one shape, as
/// `f64` (the measure every agreement test compares with a tolerance).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    max_abs(&(a - b)?)
}

/// The largest absolute element, as `f64`.
pub fn max_abs(t: &Tensor) -> Result<f64> {
    t.abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()
}

/// [`check_gradients`] for every parameter of `store`, by name.
pub fn check_store_gradients(
    store: &crate::params::ParamStore,
    loss: impl Fn() -> Result<Tensor>,
    opts: &GradCheck,
) -> Result<GradCheckReport> {
    let vars = store.vars();
    let named: Vec<(&str, &Var)> = vars.iter().map(|(n, v)| (n.as_str(), v)).collect();
    check_gradients(&named, loss, opts)
}

/// Reduces `out` to a scalar with fixed random weights, so that every output
/// element contributes a distinct gradient (a plain sum would hide, e.g., a softmax
/// backward that drops a term which sums to zero).
pub fn random_projection(out: &Tensor, seed: u64) -> Result<Tensor> {
    let mut rng = Rng::new(seed);
    let w: Vec<f64> = (0..out.elem_count()).map(|_| rng.normal()).collect();
    let w = Tensor::from_vec(w, out.shape(), out.device())?.to_dtype(out.dtype())?;
    (out * w)?.sum_all()
}

/// Checks `d loss / d var` for every `(name, var)` against central differences,
/// where `loss()` returns a scalar computed from the variables' current values.
/// Returns an error describing the first element outside tolerance, or a variable
/// that received no gradient although the loss depends on it.
pub fn check_gradients(
    vars: &[(&str, &Var)],
    loss: impl Fn() -> Result<Tensor>,
    opts: &GradCheck,
) -> Result<GradCheckReport> {
    for (name, var) in vars {
        if var.dtype() != DType::F64 {
            candle_core::bail!(
                "gradcheck: {name} is {:?}; gradient checks run in f64",
                var.dtype()
            );
        }
    }
    let value = loss()?;
    if value.rank() != 0 {
        candle_core::bail!(
            "gradcheck: loss must be a scalar, got shape {:?}",
            value.dims()
        );
    }
    let grads = value.backward()?;
    let eval = || -> Result<f64> { loss()?.to_dtype(DType::F64)?.to_scalar::<f64>() };
    let mut report = GradCheckReport {
        checked: 0,
        worst: None,
    };
    let mut worst_excess = 0f64;
    for (name, var) in vars {
        let original = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
        let analytic = grads
            .get(var.as_tensor())
            .map(|g| g.flatten_all()?.to_vec1::<f64>())
            .transpose()?;
        let n = original.len();
        let indices: Vec<usize> = if n <= opts.max_elems {
            (0..n).collect()
        } else {
            let mut rng = Rng::stream(0, name);
            let mut all: Vec<usize> = (0..n).collect();
            rng.shuffle_by_remainder(&mut all);
            all.truncate(opts.max_elems);
            all
        };
        let set = |values: &[f64]| -> Result<()> {
            var.set(&Tensor::from_slice(values, var.shape(), var.device())?)
        };
        let mut perturbed = original.clone();
        for &i in &indices {
            perturbed[i] = original[i] + opts.eps;
            set(&perturbed)?;
            let plus = eval()?;
            perturbed[i] = original[i] - opts.eps;
            set(&perturbed)?;
            let minus = eval()?;
            perturbed[i] = original[i];
            set(&perturbed)?;
            let numeric = (plus - minus) / (2.0 * opts.eps);
            let a = match &analytic {
                Some(g) => g[i],
                None if numeric.abs() <= opts.atol => 0.0,
                None => candle_core::bail!(
                    "gradcheck: {name} received no gradient, but the loss depends on it (d/d{name}[{i}] ≈ {numeric:.6e})"
                ),
            };
            report.checked += 1;
            let excess = (a - numeric).abs() - (opts.atol + opts.rtol * numeric.abs());
            if excess > worst_excess {
                worst_excess = excess;
                report.worst = Some(Mismatch {
                    var: name.to_string(),
                    index: i,
                    analytic: a,
                    numeric,
                });
            }
        }
    }
    if let Some(m) = &report.worst {
        candle_core::bail!("gradcheck: gradient mismatch at {m}");
    }
    Ok(report)
}

/// A fresh f64 `Var` of the given shape with normal entries (scaled by `std`).
pub fn randn_var(shape: &[usize], std: f64, seed: u64) -> Result<Var> {
    let mut rng = Rng::new(seed);
    let n: usize = shape.iter().product();
    let data: Vec<f64> = (0..n).map(|_| rng.normal() * std).collect();
    Var::from_tensor(&Tensor::from_vec(data, shape, &candle_core::Device::Cpu)?)
}

/// Checks that one backward pass of `loss` reaches every parameter of `store` with
/// a non-zero gradient (squared norm above 1e-16), except those named in
/// `expected_zero`, whose gradient must vanish (absent, or squared norm at most
/// 1e-20: rounding of terms that cancel exactly). Meant for f64 tests; reports
/// every offender at once.
pub fn check_every_param_learns(
    store: &crate::params::ParamStore,
    loss: impl Fn() -> Result<Tensor>,
    expected_zero: &[&str],
) -> Result<()> {
    let grads = loss()?.backward()?;
    let mut problems = Vec::new();
    for (name, var) in store.vars() {
        let norm = grads
            .get(&var)
            .map(|g| g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>())
            .transpose()?;
        let zero_expected = expected_zero.contains(&name.as_str());
        let learns = norm.is_some_and(|n| n > 1e-16 && n.is_finite());
        let vanishes = norm.is_none_or(|n| n <= 1e-20);
        if !zero_expected && !learns {
            problems.push(match norm {
                None => format!("`{name}` gets no gradient"),
                Some(n) => format!("`{name}` gets a gradient of norm² {n}"),
            });
        } else if zero_expected && !vanishes {
            problems.push(format!(
                "`{name}` was expected to get no gradient but gets norm² {}",
                norm.unwrap_or_default()
            ));
        }
    }
    if !problems.is_empty() {
        candle_core::bail!("{}", problems.join("; "));
    }
    Ok(())
}

/// A constant f64 tensor of normal entries (scaled by `std`), seeded: test inputs
/// that do not depend on a global RNG.
pub fn randn(shape: &[usize], std: f64, seed: u64) -> Result<Tensor> {
    Ok(randn_var(shape, std, seed)?.as_tensor().detach())
}
