//! The stage loop: build the model with the stage's trainable set, read the stage's
//! data in its seeded order, accumulate gradients, clip, step AdamW, log, and
//! checkpoint — resuming exactly where a previous process stopped.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use vlmkit_core::params::{Missing, ParamStore};
use vlmkit_core::rng::Rng;
use vlmkit_core::Vlm;
use vlmkit_plot::{LinePlot, Series};
use vlmkit_recipe::StageConfig;

use crate::checkpoint::{load_checkpoint, CheckpointContents, FrozenSource, RunDir, TrainState};
use crate::optim::{global_grad_norm, learning_rate, AdamW, AdamWConfig};
use crate::plan::{pattern_matches, Plan};
use crate::source::{ExampleSource, Order};
use crate::step::{forward_backward, Parallelism};
use crate::TrainError;

/// What happened in one optimizer step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    pub global_step: u64,
    pub stage: String,
    pub stage_step: u64,
    pub stage_steps: u64,
    /// Weighted total loss (mean over micro-batches).
    pub loss: f64,
    /// Each loss term (unweighted).
    pub terms: BTreeMap<String, f64>,
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    pub tokens: usize,
    pub samples: usize,
    pub seconds: f64,
}

/// Receives progress from [`train`] (progress bars, logs, tests).
pub trait Observer {
    fn stage_started(
        &mut self,
        index: usize,
        stage: &StageConfig,
        total_steps: u64,
        start_step: u64,
        data: &str,
    ) {
        let _ = (index, stage, total_steps, start_step, data);
    }
    fn step(&mut self, record: &StepRecord) {
        let _ = record;
    }
    fn checkpoint(&mut self, dir: &Path) {
        let _ = dir;
    }
    fn stage_finished(&mut self, index: usize) {
        let _ = index;
    }
    fn message(&mut self, text: &str) {
        let _ = text;
    }
    /// An example was skipped because its image is missing or corrupt;
    /// `skipped` counts them over the run so far.
    fn example_skipped(&mut self, error: &vlmkit_data::DataError, skipped: u64) {
        let _ = (error, skipped);
    }
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub final_dir: PathBuf,
    pub global_step: u64,
    /// The step a previous process had reached, when this one resumed.
    pub resumed_from: Option<u64>,
    pub last_loss: Option<f64>,
    pub seconds: f64,
    /// The run directory already held a finished run; nothing was trained.
    pub already_complete: bool,
    /// Examples skipped over the run because their image was missing or corrupt.
    pub skipped_images: u64,
}

/// One line of `metrics.jsonl`: means over a logging window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRecord {
    pub step: u64,
    pub stage: String,
    pub stage_step: u64,
    pub loss: f64,
    pub terms: BTreeMap<String, f64>,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub samples_per_s: f64,
    pub elapsed_s: f64,
}

#[derive(Default)]
struct Window {
    steps: u64,
    loss: f64,
    terms: BTreeMap<String, f64>,
    grad_norm: f64,
    tokens: usize,
    samples: usize,
    seconds: f64,
    last: Option<StepRecord>,
}

impl Window {
    fn add(&mut self, r: &StepRecord) {
        self.steps += 1;
        self.loss += r.loss;
        for (k, v) in &r.terms {
            *self.terms.entry(k.clone()).or_default() += v;
        }
        self.grad_norm += r.grad_norm;
        self.tokens += r.tokens;
        self.samples += r.samples;
        self.seconds += r.seconds;
        self.last = Some(r.clone());
    }

    fn take(&mut self, elapsed: f64) -> Option<MetricsRecord> {
        let last = self.last.take()?;
        let n = self.steps as f64;
        let record = MetricsRecord {
            step: last.global_step,
            stage: last.stage,
            stage_step: last.stage_step,
            loss: self.loss / n,
            terms: self.terms.iter().map(|(k, v)| (k.clone(), v / n)).collect(),
            lr: last.lr,
            grad_norm: self.grad_norm / n,
            tokens: self.tokens,
            samples_per_s: self.samples as f64 / self.seconds.max(1e-9),
            elapsed_s: elapsed,
        };
        *self = Window::default();
        Some(record)
    }
}

/// Appends to `metrics.jsonl`, counting lines so a checkpoint can record where the
/// run stood (a resumed run cuts the file back to that line).
struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
    lines: u64,
}

impl MetricsLog {
    fn open(path: &Path, keep_lines: Option<u64>) -> Result<Self, TrainError> {
        let io = |source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut lines = 0;
        match keep_lines {
            Some(keep) => {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let kept: Vec<&str> = text.lines().take(keep as usize).collect();
                lines = kept.len() as u64;
                let mut body = kept.join("\n");
                if !body.is_empty() {
                    body.push('\n');
                }
                vlmkit_core::fsutil::write_atomic(path, body.as_bytes()).map_err(io)?;
            }
            None => std::fs::write(path, b"").map_err(io)?,
        }
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            lines,
        })
    }

    fn write(&mut self, record: &MetricsRecord) -> Result<(), TrainError> {
        let line = serde_json::to_string(record).expect("metrics serialise");
        writeln!(self.file, "{line}").map_err(|source| TrainError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.lines += 1;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), TrainError> {
        self.file.sync_all().map_err(|source| TrainError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// Reads `metrics.jsonl`.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRecord>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                TrainError::Invalid(format!("{}: line {}: {e}", path.display(), i + 1))
            })
        })
        .collect()
}

/// Draws the loss curve of a run (one series per loss term when there are several).
pub fn plot_losses(metrics: &[MetricsRecord], title: &str, out: &Path) -> Result<(), TrainError> {
    let mut plot = LinePlot::new(title).x_label("step").y_label("loss");
    let pts = |f: &dyn Fn(&MetricsRecord) -> Option<f64>| -> Vec<(f64, f64)> {
        metrics
            .iter()
            .filter_map(|m| f(m).map(|v| (m.step as f64, v)))
            .collect()
    };
    let window = (metrics.len() / 25).max(1);
    plot.add_series(Series::new("loss", pts(&|m| Some(m.loss))).smoothed(window));
    let term_names: std::collections::BTreeSet<&String> =
        metrics.iter().flat_map(|m| m.terms.keys()).collect();
    if term_names.len() > 1 {
        for name in term_names {
            plot.add_series(
                Series::new(name.clone(), pts(&|m| m.terms.get(name).copied())).smoothed(window),
            );
        }
    }
    plot.save_png(out, 900, 520)
        .map_err(|e| TrainError::Invalid(format!("{}: {e}", out.display())))
}

/// The device a recipe asks for (`auto` takes a GPU when the build has one).
pub fn select_device(name: &str) -> Result<Device, TrainError> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        other => {
            let ordinal = match other.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| TrainError::Invalid(format!("unknown device `{other}`")))?,
                None => return Err(TrainError::Invalid(format!("unknown device `{other}`"))),
            };
            Device::new_cuda(ordinal).map_err(|e| {
                TrainError::Invalid(format!(
                    "device `{other}` is not available ({e}); this build may lack the `cuda` feature"
                ))
            })
        }
    }
}

/// What `auto` (or an explicit name) resolved to, in words for the log.
pub fn describe_device(requested: &str, device: &Device) -> String {
    let picked = match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    };
    match (requested, device.is_cpu()) {
        ("auto", true) if candle_core::utils::cuda_is_available() => {
            "device auto: no CUDA device found, running on the cpu".to_string()
        }
        ("auto", true) => {
            "device auto: this build has no `cuda` feature, running on the cpu".to_string()
        }
        ("auto", false) => format!("device auto: picked {picked}"),
        _ => format!("device {picked}"),
    }
}

/// Trainable-parameter predicate of a stage: its patterns, minus parameters that
/// cannot receive a gradient with this layer selection.
pub fn stage_trainable(
    stage: &StageConfig,
    unused: &[String],
) -> Arc<dyn Fn(&str) -> bool + Send + Sync> {
    let patterns = stage.trainable.clone();
    let unused = unused.to_vec();
    Arc::new(move |name: &str| {
        patterns.iter().any(|p| pattern_matches(p, name))
            && !unused.iter().any(|u| name.starts_with(u.as_str()))
    })
}

/// A stage's model: its trainable parameters take part in the autograd graph,
/// every other one is detached (frozen weights cost no gradient work).
pub struct StageModel {
    pub vlm: Vlm,
    /// The parameters this stage trains, by name.
    pub params: Vec<(String, Var)>,
}

impl StageModel {
    /// Builds `stage`'s view of the parameters already in `store`; `unused` are the
    /// prefixes [`Plan::create_params`] found unreachable by gradients.
    pub fn build(
        plan: &Plan,
        store: &ParamStore,
        stage: &StageConfig,
        unused: &[String],
    ) -> Result<Self, TrainError> {
        let trainable = stage_trainable(stage, unused);
        let vlm = plan.build(
            store,
            Missing::Error,
            trainable.clone(),
            plan.loss_weights(stage),
        )?;
        let params = store
            .vars()
            .into_iter()
            .filter(|(name, _)| trainable(name))
            .collect();
        Ok(StageModel { vlm, params })
    }

    /// A fresh AdamW over the stage's parameters with the stage's settings.
    pub fn optimizer(&self, stage: &StageConfig) -> Result<AdamW, TrainError> {
        Ok(AdamW::new(
            self.params.clone(),
            AdamWConfig {
                beta1: stage.betas[0],
                beta2: stage.betas[1],
                eps: stage.eps,
                weight_decay: stage.weight_decay,
            },
        )?
        .with_lr_scales(|name| crate::plan::part_lr(stage, name) / stage.lr))
    }
}

/// Worker threads for `run.threads` (0 = every core).
pub fn worker_threads(threads: usize) -> usize {
    if threads > 0 {
        threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

fn stage_steps(stage: &StageConfig, len: u64) -> u64 {
    match (stage.steps, stage.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => {
            let per_step = (stage.batch_size * stage.grad_accum) as f64;
            ((e * len as f64) / per_step).ceil().max(1.0) as u64
        }
        (None, None) => 1,
    }
}

/// Trains `plan` into `run`, resuming from its newest checkpoint if it has one.
pub fn train(
    plan: &Plan,
    run: &RunDir,
    observer: &mut dyn Observer,
) -> Result<TrainSummary, TrainError> {
    let started = Instant::now();
    let recipe = &plan.recipe;
    let recipe_toml = plan.run_recipe_toml();
    std::fs::create_dir_all(&run.path).map_err(|source| TrainError::Io {
        path: run.path.clone(),
        source,
    })?;
    if run
        .final_dir()
        .join(crate::checkpoint::STATE_FILE)
        .is_file()
    {
        return Ok(TrainSummary {
            run_dir: run.path.clone(),
            final_dir: run.final_dir(),
            global_step: crate::checkpoint::read_state(&run.final_dir())?.global_step,
            resumed_from: None,
            last_loss: None,
            seconds: 0.0,
            already_complete: true,
            skipped_images: 0,
        });
    }
    let device = select_device(&recipe.run.device)?;
    if recipe.run.device == "auto" || !device.is_cpu() {
        observer.message(&describe_device(&recipe.run.device, &device));
    }
    let store = ParamStore::new(device.clone(), DType::F32);
    let seed = recipe.run.seed;

    let latest = run.latest()?;
    let (mut state, mut optimizer_state, resumed_from, metrics_keep) = match &latest {
        Some(dir) => {
            let mut ck = load_checkpoint(dir)?;
            crate::checkpoint::check_same_recipe(&run.path, &ck.recipe_toml, &recipe_toml)?;
            crate::checkpoint::restore_frozen(&mut ck, plan)?;
            store.insert_tensors(ck.model)?;
            observer.message(&format!(
                "resuming from {} (step {})",
                dir.display(),
                ck.state.global_step
            ));
            let keep = ck.state.metrics_lines;
            let step = ck.state.global_step;
            (ck.state, Some(ck.optimizer), Some(step), Some(keep))
        }
        None => {
            vlmkit_core::fsutil::write_atomic(&run.recipe(), recipe_toml.as_bytes()).map_err(
                |source| TrainError::Io {
                    path: run.recipe(),
                    source,
                },
            )?;
            (TrainState::fresh(recipe), None, None, None)
        }
    };
    let mut metrics = MetricsLog::open(&run.metrics(), metrics_keep)?;
    let rng = Rng::from_state(state.rng);

    // Create every parameter (a resumed run has them all in its checkpoint) and
    // find those that can receive no gradient with this layer selection.
    let unused = if latest.is_some() {
        store.begin_build();
        plan.create_params(&store, Missing::Error)?
    } else {
        plan.create_fresh_params(&store)?
    };
    let parallelism = Parallelism::new(worker_threads(recipe.run.threads));
    let mut last_loss = None;
    let mut last_checkpoint = latest.clone();

    // Pretrained parts no stage has trained yet are left out of checkpoints and
    // read back from their sources, identified once here.
    let sources = plan
        .pretrained_parts()
        .into_iter()
        .map(|(part, path)| {
            let fingerprint = crate::checkpoint::source_fingerprint(path)?;
            let path = path.to_path_buf();
            Ok((part, FrozenSource { path, fingerprint }))
        })
        .collect::<Result<BTreeMap<_, _>, TrainError>>()?;
    let contents = |store: &ParamStore,
                    opt: Option<&AdamW>,
                    state: &TrainState|
     -> Result<CheckpointContents, TrainError> {
        let frozen = plan.frozen_pretrained_parts(state.stage);
        let in_frozen = |name: &str| {
            frozen
                .iter()
                .any(|part| name.strip_prefix(part).is_some_and(|r| r.starts_with('.')))
        };
        let mut state = state.clone();
        state.frozen_sources = frozen
            .iter()
            .map(|part| (part.to_string(), sources[part].clone()))
            .collect();
        Ok(CheckpointContents {
            model: store.to_cpu_tensors(|name| !in_frozen(name))?,
            optimizer: match opt {
                Some(o) => o.state_tensors()?,
                None => BTreeMap::new(),
            },
            state,
            recipe_toml: recipe_toml.clone(),
            tokenizer_json: plan.tokenizer()?.to_json()?,
        })
    };

    for stage_index in state.stage..recipe.stages.len() {
        let stage = &recipe.stages[stage_index];
        let source = plan.train_data(stage_index)?.open()?;
        if source.is_empty() {
            return Err(recipe
                .error_at(
                    &format!("stage.{stage_index}"),
                    "the stage's training data is empty",
                )
                .into());
        }
        let total = stage_steps(stage, source.len());
        let resuming_here = state.stage == stage_index && state.stage_step > 0;
        if !resuming_here {
            state.stage = stage_index;
            state.stage_name = stage.name.clone();
            state.stage_step = 0;
            state.samples_seen = 0;
        }
        let model = StageModel::build(plan, &store, stage, &unused)?;
        let builder = plan.stage_batch_builder(stage_index, device.clone())?;
        let mut opt = model.optimizer(stage)?;
        let StageModel { vlm, params } = model;
        if resuming_here {
            let saved = optimizer_state.take().unwrap_or_default();
            opt.load_state(&saved, state.stage_step)?;
        }
        let mut order = Order::new(source.len(), seed, &stage.name);
        let max_skipped = plan.train_data(stage_index)?.max_skipped();
        observer.stage_started(
            stage_index,
            stage,
            total,
            state.stage_step,
            &source.describe(),
        );
        let mut window = Window::default();
        let mut checked_gradients = false;

        while state.stage_step < total {
            let t0 = Instant::now();
            let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
            let mut loss_sum = 0f64;
            let mut term_sums: BTreeMap<String, f64> = BTreeMap::new();
            let mut tokens = 0usize;
            for _ in 0..stage.grad_accum {
                let examples = next_examples(
                    source.as_ref(),
                    &mut order,
                    stage.batch_size,
                    max_skipped,
                    &mut state,
                    observer,
                )?;
                let out = forward_backward(
                    &vlm,
                    &builder,
                    &examples,
                    &params,
                    1.0 / stage.grad_accum as f64,
                    parallelism,
                )?;
                if !out.loss.is_finite() {
                    return Err(TrainError::NonFinite {
                        step: state.global_step + 1,
                        stage: stage.name.clone(),
                        value: out.loss,
                        last_checkpoint,
                    });
                }
                loss_sum += out.loss;
                for (k, v) in out.terms {
                    *term_sums.entry(k).or_default() += v;
                }
                tokens += out.tokens;
                for (name, g) in out.grads {
                    let g = match grads.remove(&name) {
                        Some(acc) => (acc + g)?,
                        None => g,
                    };
                    grads.insert(name, g);
                }
            }
            if !checked_gradients {
                let missing: Vec<&str> = params
                    .iter()
                    .filter(|(n, _)| !grads.contains_key(n))
                    .map(|(n, _)| n.as_str())
                    .collect();
                if !missing.is_empty() {
                    return Err(TrainError::Invalid(format!(
                        "stage `{}`: {} trainable parameter(s) receive no gradient, e.g. {}; they do not influence the loss with this recipe",
                        stage.name,
                        missing.len(),
                        missing.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
                checked_gradients = true;
            }
            let grad_norm = global_grad_norm(&grads)?;
            if !grad_norm.is_finite() {
                return Err(TrainError::NonFinite {
                    step: state.global_step + 1,
                    stage: stage.name.clone(),
                    value: grad_norm,
                    last_checkpoint,
                });
            }
            let scale = match stage.clip_norm {
                Some(c) if grad_norm > c => c / (grad_norm + 1e-6),
                _ => 1.0,
            };
            let lr = learning_rate(
                state.stage_step,
                total,
                stage.lr,
                stage.warmup_ratio,
                stage.schedule,
                stage.min_lr_ratio,
            );
            opt.step(&grads, lr, scale)?;
            state.stage_step += 1;
            state.global_step += 1;
            let accum = stage.grad_accum as f64;
            let record = StepRecord {
                global_step: state.global_step,
                stage: stage.name.clone(),
                stage_step: state.stage_step,
                stage_steps: total,
                loss: loss_sum / accum,
                terms: term_sums.into_iter().map(|(k, v)| (k, v / accum)).collect(),
                lr,
                grad_norm,
                tokens,
                samples: stage.batch_size * stage.grad_accum,
                seconds: t0.elapsed().as_secs_f64(),
            };
            last_loss = Some(record.loss);
            observer.step(&record);
            window.add(&record);
            let log_now = state.global_step % recipe.run.log_every.max(1) == 0;
            let checkpoint_now = state.global_step % recipe.run.checkpoint_every.max(1) == 0
                && state.stage_step < total;
            if log_now || checkpoint_now {
                if let Some(m) = window.take(started.elapsed().as_secs_f64()) {
                    metrics.write(&m)?;
                }
            }
            if checkpoint_now {
                metrics.sync()?;
                state.metrics_lines = metrics.lines;
                state.rng = rng.state();
                let dir = run.save_checkpoint(
                    &contents(&store, Some(&opt), &state)?,
                    recipe.run.keep_checkpoints,
                )?;
                observer.checkpoint(&dir);
                last_checkpoint = Some(dir);
            }
        }
        if let Some(m) = window.take(started.elapsed().as_secs_f64()) {
            metrics.write(&m)?;
        }
        metrics.sync()?;
        observer.stage_finished(stage_index);
        // A stage boundary is a checkpoint: the next stage starts a fresh optimizer.
        state.stage = stage_index + 1;
        state.stage_step = 0;
        state.samples_seen = 0;
        state.metrics_lines = metrics.lines;
        state.rng = rng.state();
        let dir = run.save_checkpoint(
            &contents(&store, None, &state)?,
            recipe.run.keep_checkpoints,
        )?;
        observer.checkpoint(&dir);
        last_checkpoint = Some(dir);
    }

    let final_dir = run.save_final(&contents(&store, None, &state)?)?;
    if let Ok(records) = read_metrics(&run.metrics()) {
        if !records.is_empty() {
            plot_losses(
                &records,
                &format!("{}: training loss", recipe.run.name),
                &run.loss_plot(),
            )?;
        }
    }
    Ok(TrainSummary {
        run_dir: run.path.clone(),
        final_dir,
        global_step: state.global_step,
        resumed_from,
        last_loss,
        seconds: started.elapsed().as_secs_f64(),
        already_complete: false,
        skipped_images: state.skipped_images,
    })
}

/// The next `batch_size` examples in `order`, skipping (and counting) those whose
/// image is missing or corrupt. Skips beyond `max_skipped` of the examples the
/// stage has read, or a whole epoch without a usable example, end the run.
fn next_examples(
    source: &dyn ExampleSource,
    order: &mut Order,
    batch_size: usize,
    max_skipped: f64,
    state: &mut TrainState,
    observer: &mut dyn Observer,
) -> Result<Vec<vlmkit_data::Example>, TrainError> {
    let mut examples = Vec::with_capacity(batch_size);
    let mut skipped_in_a_row = 0u64;
    while examples.len() < batch_size {
        let index = order.index(state.samples_seen);
        state.samples_seen += 1;
        match source.get(index) {
            Ok(example) => {
                examples.push(example);
                skipped_in_a_row = 0;
            }
            Err(error) if error.is_bad_image() => {
                state.skipped_images += 1;
                skipped_in_a_row += 1;
                observer.example_skipped(&error, state.skipped_images);
                let over_limit = state.skipped_images > 10
                    && state.skipped_images as f64 > max_skipped * state.samples_seen as f64;
                if over_limit || skipped_in_a_row >= source.len() {
                    return Err(TrainError::Invalid(format!(
                        "{} of the {} examples read so far were skipped for a missing or corrupt image (the data's `max_skipped` allows {:.1}%); the last: {error}",
                        state.skipped_images,
                        state.samples_seen,
                        100.0 * max_skipped
                    )));
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(examples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_says_which_device_it_picked_and_why() {
        let device = select_device("auto").unwrap();
        let said = describe_device("auto", &device);
        if candle_core::utils::cuda_is_available() {
            assert!(said.starts_with("device auto: "), "{said}");
        } else {
            assert!(device.is_cpu());
            assert_eq!(
                said,
                "device auto: this build has no `cuda` feature, running on the cpu"
            );
            let refused = select_device("cuda:0").unwrap_err().to_string();
            assert!(refused.contains("`cuda` feature"), "{refused}");
        }
        assert_eq!(describe_device("cpu", &Device::Cpu), "device cpu");
        assert!(select_device("gpu").is_err());
    }
}
