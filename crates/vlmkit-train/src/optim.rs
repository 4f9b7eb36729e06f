//! AdamW with decoupled weight decay (none on norms, biases and other 1-D
//! parameters), a warm-up + cosine/linear/constant schedule, and clipping by global
//! gradient norm. On the CPU the update is one fused in-place pass per tensor.

use std::collections::BTreeMap;

use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Tensor, Var};
use vlmkit_recipe::Schedule;

/// One optimised parameter and its moments.
struct Slot {
    name: String,
    var: Var,
    /// First and second moments, packed `[m; v]` (2·numel, f32).
    state: Tensor,
    decay: bool,
    /// This parameter's learning rate relative to the step's (per-part rates).
    lr_scale: f64,
}

/// Hyper-parameters of an AdamW step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// AdamW over a fixed set of named parameters.
pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    /// Number of updates applied (for bias correction).
    pub steps: u64,
}

/// Weight decay applies to matrices, not to norms, biases or other vectors.
pub fn decays(var: &Var) -> bool {
    var.rank() >= 2
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let slots = params
            .into_iter()
            .map(|(name, var)| {
                let state = Tensor::zeros(2 * var.elem_count(), DType::F32, var.device())?;
                Ok(Slot {
                    decay: decays(&var),
                    name,
                    var,
                    state,
                    lr_scale: 1.0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg,
            slots,
            steps: 0,
        })
    }

    /// Scales each parameter's learning rate by `scale(name)` (per-part rates:
    /// the part's peak rate over the stage's).
    pub fn with_lr_scales(mut self, scale: impl Fn(&str) -> f64) -> Self {
        for slot in &mut self.slots {
            slot.lr_scale = scale(&slot.name);
        }
        self
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.name.as_str())
    }

    /// Applies one update with learning rate `lr`, gradients scaled by `grad_scale`
    /// (for clipping). Parameters without a gradient are left untouched.
    pub fn step(
        &mut self,
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
        grad_scale: f64,
    ) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        let update = AdamUpdate {
            lr,
            beta1: self.cfg.beta1,
            beta2: self.cfg.beta2,
            eps: self.cfg.eps,
            weight_decay: 0.0,
            bias1: 1.0 - self.cfg.beta1.powi(t),
            bias2: 1.0 - self.cfg.beta2.powi(t),
            grad_scale,
        };
        for slot in &self.slots {
            let Some(grad) = grads.get(&slot.name) else {
                continue;
            };
            let op = AdamUpdate {
                lr: lr * slot.lr_scale,
                weight_decay: if slot.decay {
                    self.cfg.weight_decay
                } else {
                    0.0
                },
                ..update
            };
            let grad = grad.to_dtype(DType::F32)?.contiguous()?;
            if slot.var.device().is_cpu() && slot.var.dtype() == DType::F32 {
                slot.state.inplace_op2(&grad, &MomentUpdate(op))?;
                slot.var.as_tensor().inplace_op2(&slot.state, &op)?;
            } else {
                op.apply_tensors(&slot.var, &slot.state, &grad)?;
            }
        }
        Ok(())
    }

    /// Optimizer state for a checkpoint: `adam.m.<name>`, `adam.v.<name>`.
    pub fn state_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for slot in &self.slots {
            let n = slot.var.elem_count();
            let state = slot.state.to_device(&candle_core::Device::Cpu)?;
            out.insert(
                format!("adam.m.{}", slot.name),
                state.narrow(0, 0, n)?.reshape(slot.var.shape())?,
            );
            out.insert(
                format!("adam.v.{}", slot.name),
                state.narrow(0, n, n)?.reshape(slot.var.shape())?,
            );
        }
        Ok(out)
    }

    /// Restores the moments saved by [`AdamW::state_tensors`]; every slot must be
    /// present with its shape.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, steps: u64) -> Result<()> {
        for slot in &mut self.slots {
            let get = |k: &str| -> Result<Tensor> {
                let key = format!("adam.{k}.{}", slot.name);
                let t = tensors.get(&key).ok_or_else(|| {
                    candle_core::Error::Msg(format!("checkpoint lacks optimizer state `{key}`"))
                })?;
                if t.shape() != slot.var.shape() {
                    candle_core::bail!(
                        "optimizer state `{key}` has shape {:?}, parameter has {:?}",
                        t.dims(),
                        slot.var.dims()
                    );
                }
                t.to_dtype(DType::F32)?.flatten_all()
            };
            let packed = Tensor::cat(&[get("m")?, get("v")?], 0)?.to_device(slot.var.device())?;
            slot.state = packed;
        }
        self.steps = steps;
        Ok(())
    }
}

/// The global L2 norm of `grads`.
pub fn global_grad_norm(grads: &BTreeMap<String, Tensor>) -> Result<f64> {
    let mut total = 0f64;
    for g in grads.values() {
        {
            total += g
                .to_dtype(DType::F32)?
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    Ok(total.sqrt())
}

/// Learning rate at `step` (0-based) of a stage of `total` steps: linear warm-up over
/// `warmup_ratio` of the steps, then the schedule down to `min_lr_ratio · lr`.
pub fn learning_rate(
    step: u64,
    total: u64,
    lr: f64,
    warmup_ratio: f64,
    schedule: Schedule,
    min_ratio: f64,
) -> f64 {
    let warmup = (warmup_ratio * total as f64).ceil() as u64;
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).clamp(0.0, 1.0);
    let floor = lr * min_ratio;
    match schedule {
        Schedule::Constant => lr,
        Schedule::Linear => floor + (lr - floor) * (1.0 - progress),
        Schedule::Cosine => {
            floor + (lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct AdamUpdate {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    bias1: f64,
    bias2: f64,
    grad_scale: f64,
}

impl AdamUpdate {
    /// The same update with tensor ops (devices without the fused kernel).
    fn apply_tensors(&self, var: &Var, state: &Tensor, grad: &Tensor) -> Result<()> {
        let n = var.elem_count();
        let g = (grad.flatten_all()? * self.grad_scale)?;
        let m = state.narrow(0, 0, n)?;
        let v = state.narrow(0, n, n)?;
        let m = ((m * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
        let v = ((v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
        let step = ((&m / self.bias1)? / ((&v / self.bias2)?.sqrt()? + self.eps)?)?;
        let p = var.as_tensor().to_dtype(DType::F32)?.flatten_all()?;
        let p = (p * (1.0 - self.lr * self.weight_decay))?;
        let p = (p - (step * self.lr)?)?;
        var.set(&p.reshape(var.shape())?.to_dtype(var.dtype())?)?;
        // The moments live in one buffer: write them back in place.
        let packed = Tensor::cat(&[m, v], 0)?;
        state.slice_set(&packed, 0, 0)
    }
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("adamw: expected a contiguous f32 tensor"),
    }
}

fn f32_slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("adamw: expected a contiguous f32 tensor"),
    }
}

/// `m ← β1·m + (1−β1)·g`, `v ← β2·v + (1−β2)·g²`, in place on the packed moments.
struct MomentUpdate(AdamUpdate);

impl InplaceOp2 for MomentUpdate {
    fn name(&self) -> &'static str {
        "vlmkit-adamw-moments"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> Result<()> {
        let state = f32_slice_mut(dst, dst_l)?;
        let g = f32_slice(g, gl)?;
        let n = g.len();
        let (m, v) = state.split_at_mut(n);
        let (b1, b2, s) = (
            self.0.beta1 as f32,
            self.0.beta2 as f32,
            self.0.grad_scale as f32,
        );
        for i in 0..n {
            let gi = g[i] * s;
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
        }
        Ok(())
    }
}

/// `θ ← θ·(1 − lr·wd) − lr·m̂/(√v̂ + ε)`, in place on the parameter.
impl InplaceOp2 for AdamUpdate {
    fn name(&self) -> &'static str {
        "vlmkit-adamw-step"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        s: &CpuStorage,
        sl: &Layout,
    ) -> Result<()> {
        let p = f32_slice_mut(dst, dst_l)?;
        let state = f32_slice(s, sl)?;
        let n = p.len();
        let (m, v) = state.split_at(n);
        let decay = (1.0 - self.lr * self.weight_decay) as f32;
        let (lr, eps) = (self.lr as f32, self.eps as f32);
        let (c1, c2) = ((1.0 / self.bias1) as f32, (1.0 / self.bias2) as f32);
        for i in 0..n {
            let step = (m[i] * c1) / ((v[i] * c2).sqrt() + eps);
            p[i] = p[i] * decay - lr * step;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn cfg() -> AdamWConfig {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }

    /// A plain-Rust AdamW reference, in f64.
    struct RefAdam {
        m: Vec<f64>,
        v: Vec<f64>,
        t: i32,
    }

    impl RefAdam {
        fn step(&mut self, p: &mut [f32], g: &[f32], lr: f64, wd: f64) {
            let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
            self.t += 1;
            for i in 0..p.len() {
                let gi = g[i] as f64;
                self.m[i] = b1 * self.m[i] + (1.0 - b1) * gi;
                self.v[i] = b2 * self.v[i] + (1.0 - b2) * gi * gi;
                let mh = self.m[i] / (1.0 - b1.powi(self.t));
                let vh = self.v[i] / (1.0 - b2.powi(self.t));
                p[i] = (p[i] as f64 * (1.0 - lr * wd) - lr * mh / (vh.sqrt() + eps)) as f32;
            }
        }
    }

    #[test]
    fn a_part_learning_rate_scales_its_parameters_steps() {
        let start = Tensor::new(&[[0.5f32, -1.0], [2.0, 0.25]], &Device::Cpu).unwrap();
        let (fast, slow) = (
            Var::from_tensor(&start).unwrap(),
            Var::from_tensor(&start).unwrap(),
        );
        let mut opt = AdamW::new(
            vec![("fast".into(), fast.clone()), ("slow".into(), slow.clone())],
            AdamWConfig {
                weight_decay: 0.1,
                ..cfg()
            },
        )
        .unwrap()
        .with_lr_scales(|name| if name == "slow" { 0.01 } else { 1.0 });
        let grad = Tensor::new(&[[1.0f32, -2.0], [0.5, 3.0]], &Device::Cpu).unwrap();
        let grads = BTreeMap::from([
            ("fast".to_string(), grad.clone()),
            ("slow".to_string(), grad),
        ]);
        opt.step(&grads, 1e-2, 1.0).unwrap();
        let moved = |v: &Var| -> Vec<f64> {
            let now: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let was: Vec<f32> = start.flatten_all().unwrap().to_vec1().unwrap();
            now.iter().zip(&was).map(|(a, b)| (a - b) as f64).collect()
        };
        // Decay and the Adam step both use the parameter's own rate.
        for (f, s) in moved(&fast).iter().zip(moved(&slow)) {
            assert!(f.abs() > 1e-3, "{f}");
            assert!((s - 0.01 * f).abs() < 1e-7, "{s} vs {f}");
        }
    }

    fn run(fused: bool) -> Vec<f32> {
        let w =
            Var::from_tensor(&Tensor::new(&[[0.5f32, -1.0], [2.0, 0.25]], &Device::Cpu).unwrap())
                .unwrap();
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], cfg()).unwrap();
        for step in 0..3 {
            let x = Tensor::new(&[[1.0f32, 2.0 + step as f32], [-1.0, 0.5]], &Device::Cpu).unwrap();
            let loss = (w.as_tensor() * &x)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            let store = loss.backward().unwrap();
            let mut grads = BTreeMap::new();
            grads.insert("w".to_string(), store.get(w.as_tensor()).unwrap().clone());
            if fused {
                opt.step(&grads, 0.01, 1.0).unwrap();
            } else {
                opt.steps += 1;
                let t = opt.steps as i32;
                let g = grads["w"].contiguous().unwrap();
                AdamUpdate {
                    lr: 0.01,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: 0.1,
                    bias1: 1.0 - 0.9f64.powi(t),
                    bias2: 1.0 - 0.999f64.powi(t),
                    grad_scale: 1.0,
                }
                .apply_tensors(&w, &opt.slots[0].state, &g)
                .unwrap();
            }
        }
        w.as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    }

    #[test]
    fn fused_and_tensor_updates_match_the_reference() {
        // Gradients of sum((w⊙x)²) are 2·w·x².
        let mut p = vec![0.5f32, -1.0, 2.0, 0.25];
        let mut reference = RefAdam {
            m: vec![0.0; 4],
            v: vec![0.0; 4],
            t: 0,
        };
        for step in 0..3 {
            let x = [1.0f32, 2.0 + step as f32, -1.0, 0.5];
            let g: Vec<f32> = p.iter().zip(x).map(|(w, x)| 2.0 * w * x * x).collect();
            reference.step(&mut p, &g, 0.01, 0.1);
        }
        let fused = run(true);
        let tensors = run(false);
        for ((a, b), c) in fused.iter().zip(&tensors).zip(&p) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
            assert!((a - c).abs() < 1e-5, "{a} vs {c}");
        }
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        let lr = |s| learning_rate(s, 100, 1.0, 0.1, Schedule::Cosine, 0.0);
        assert!((lr(0) - 0.1).abs() < 1e-12);
        assert!((lr(9) - 1.0).abs() < 1e-12);
        assert!(lr(50) < 1.0 && lr(50) > 0.0);
        assert!(lr(99) < 0.01);
        assert_eq!(
            learning_rate(70, 100, 0.5, 0.0, Schedule::Constant, 0.0),
            0.5
        );
        let lin = learning_rate(50, 100, 1.0, 0.0, Schedule::Linear, 0.2);
        assert!((lin - 0.6).abs() < 1e-12);
    }

    #[test]
    fn decay_skips_vectors() {
        let v = Var::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let m = Var::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(!decays(&v));
        assert!(decays(&m));
    }
}
