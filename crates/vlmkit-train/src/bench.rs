//! `vlmkit bench`: where a training step's time goes — data, forward, backward,
//! optimizer — as medians over measured steps, with throughput and peak memory.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{DType, Tensor, Var};
use serde::Serialize;
use vlmkit_core::params::{Missing, ParamStore};

use vlmkit_pipeline::{select_device, PipelineError, Plan};

use crate::optim::global_grad_norm;
use crate::order::Order;
use crate::step::{forward_backward, Parallelism};
use crate::trainer::{worker_threads, StageModel};
use crate::TrainError;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Stage whose trainable set and batch size are used.
    pub stage: usize,
    pub warmup: usize,
    pub steps: usize,
    /// Overrides the stage's batch size.
    pub batch_size: Option<usize>,
}

/// Medians (seconds) of each phase of a step.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub recipe: String,
    pub device: String,
    pub threads: usize,
    pub batch_size: usize,
    pub steps: usize,
    pub trainable_params: usize,
    pub frozen_params: usize,
    pub data_s: f64,
    pub forward_s: f64,
    pub backward_s: f64,
    pub optimizer_s: f64,
    pub step_s: f64,
    pub samples_per_s: f64,
    /// The trainer's step: the batch in length-sorted parts on worker threads.
    pub workers: usize,
    pub parts: usize,
    pub sharded_step_s: f64,
    pub sharded_samples_per_s: f64,
    /// Peak resident memory of the process, when the platform reports it.
    pub peak_rss_mib: Option<f64>,
}

/// The median (mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    Some(if n % 2 == 1 {
        sorted[n / 2]
    } else {
        0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
    })
}

/// A memory figure of this process from `/proc/self/status` (Linux), in MiB.
fn proc_status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Peak resident set size (Linux: `VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    proc_status_mib("VmHWM:")
}

/// Resident set size now (Linux: `VmRSS`).
pub fn rss_mib() -> Option<f64> {
    proc_status_mib("VmRSS:")
}

/// Resets the peak resident set size to the current one (Linux ≥ 4.0: `5` into
/// `/proc/self/clear_refs`); whether it could.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Waits for pending device work (timing on asynchronous devices).
fn sync(params: &[(String, Var)]) -> Result<(), TrainError> {
    if let Some((_, v)) = params.first() {
        let _ = v
            .as_tensor()
            .flatten_all()?
            .get(0)?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
    }
    Ok(())
}

pub fn bench(plan: &Plan, opts: &BenchOptions) -> Result<BenchReport, TrainError> {
    let recipe = &plan.recipe;
    let stage = recipe
        .stages
        .get(opts.stage)
        .ok_or(PipelineError::NoStage {
            stages: recipe.stages.len(),
            stage: opts.stage,
        })?;
    let device = select_device(&recipe.run.device)?;
    let store = ParamStore::new(device.clone(), DType::F32);
    let unused = plan.model.create_params(
        &store,
        Missing::Initialize {
            seed: recipe.run.seed,
        },
    )?;
    let model = StageModel::build(plan, &store, stage, &unused)?;
    let mut opt = model.optimizer(&plan.stages, stage)?;
    let StageModel { vlm, params } = model;
    let trainable_params = params.iter().map(|(_, v)| v.elem_count()).sum();
    let frozen_params = store.count(|_| true) - trainable_params;
    let source = plan.train_data(opts.stage).open()?;
    let builder = plan.batch_builder(device.clone())?;
    let bs = opts.batch_size.unwrap_or(stage.batch_size);
    let mut order = Order::new(source.len(), recipe.run.seed, &stage.name);
    let parallelism = Parallelism::new(worker_threads(recipe.run.threads));
    let mut data = vec![];
    let mut fwd = vec![];
    let mut bwd = vec![];
    let mut optim = vec![];
    let mut total = vec![];
    let mut sharded = vec![];
    let mut position = 0u64;
    let scale_for = |norm: f64| if norm > 1.0 { 1.0 / norm } else { 1.0 };
    for i in 0..opts.warmup + opts.steps {
        let t0 = Instant::now();
        let examples = (0..bs as u64)
            .map(|k| source.get(order.index(position + k)))
            .collect::<Result<Vec<_>, _>>()?;
        position += bs as u64;
        let batch = builder.train(&examples)?;
        // Serial baseline: the whole batch in one graph, ops on the intra-op pool.
        let t1 = Instant::now();
        let out = vlm.loss(&batch)?;
        let objective = out
            .objective(&vlm.loss_weights, |_| 1.0)?
            .ok_or(TrainError::NothingToTrain)?;
        // Force the forward to finish before timing (asynchronous devices).
        let _ = objective.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let t2 = Instant::now();
        let store = objective.backward()?;
        let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
        for (name, var) in &params {
            if let Some(g) = store.get(var.as_tensor()) {
                grads.insert(name.clone(), g.clone());
            }
        }
        drop(store);
        let norm = global_grad_norm(&grads)?;
        let t3 = Instant::now();
        opt.step(&grads, stage.lr, scale_for(norm))?;
        sync(&params)?;
        let t4 = Instant::now();
        // The trainer's step: length-sorted parts on worker threads.
        let result = forward_backward(&vlm, &builder, &examples, &params, 1.0, parallelism)?;
        let norm = global_grad_norm(&result.grads)?;
        opt.step(&result.grads, stage.lr, scale_for(norm))?;
        sync(&params)?;
        let t5 = Instant::now();
        if i >= opts.warmup {
            data.push((t1 - t0).as_secs_f64());
            fwd.push((t2 - t1).as_secs_f64());
            bwd.push((t3 - t2).as_secs_f64());
            optim.push((t4 - t3).as_secs_f64());
            total.push((t4 - t0).as_secs_f64());
            sharded.push((t5 - t4).as_secs_f64() + (t1 - t0).as_secs_f64());
        }
    }
    let sharded_s = median(&sharded).unwrap_or(f64::NAN);
    let step_s = median(&total).unwrap_or(f64::NAN);
    Ok(BenchReport {
        recipe: recipe.path().display().to_string(),
        device: format!("{device:?}"),
        threads: rayon::current_num_threads(),
        batch_size: bs,
        steps: opts.steps,
        trainable_params,
        frozen_params,
        data_s: median(&data).unwrap_or(f64::NAN),
        forward_s: median(&fwd).unwrap_or(f64::NAN),
        backward_s: median(&bwd).unwrap_or(f64::NAN),
        optimizer_s: median(&optim).unwrap_or(f64::NAN),
        step_s,
        samples_per_s: bs as f64 / step_s,
        workers: parallelism.workers,
        parts: parallelism.parts,
        sharded_step_s: sharded_s,
        sharded_samples_per_s: bs as f64 / sharded_s,
        peak_rss_mib: peak_rss_mib(),
    })
}
