//! One stage of a run: its model with the stage's trainable set, its data in
//! order, and its optimizer steps — each the gradients of `grad_accum`
//! micro-batches, checked, clipped and applied — logged and checkpointed.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{Tensor, Var};
use vlmkit_core::params::{Missing, ParamStore};
use vlmkit_core::Vlm;
use vlmkit_pipeline::batch::BatchBuilder;
use vlmkit_pipeline::plan::StagePlan;
use vlmkit_pipeline::Plan;
use vlmkit_recipe::StageConfig;

use super::metrics::Window;
use super::reader::StageReader;
use super::{checks, StepRecord, Trainer};
use crate::optim::{global_grad_norm, learning_rate, AdamW, AdamWConfig};
use crate::step::forward_backward_tokenised;
use crate::TrainError;

/// A stage's model: its trainable parameters take part in the autograd graph,
/// every other one is detached (frozen weights cost no gradient work).
pub struct StageModel {
    pub vlm: Vlm,
    /// The parameters this stage trains, by name.
    pub params: Vec<(String, Var)>,
}

impl StageModel {
    /// Builds `stage`'s view of the parameters already in `store`; `unused` are the
    /// prefixes [`vlmkit_pipeline::plan::ModelPlan::create_params`] found
    /// unreachable by gradients.
    pub fn build(
        plan: &Plan,
        store: &ParamStore,
        stage: &StageConfig,
        unused: &[String],
    ) -> Result<Self, TrainError> {
        let trainable = plan.stages.trainable(stage, unused);
        let vlm = plan.model.build(
            store,
            Missing::Error,
            trainable.clone(),
            plan.stages.loss_weights(stage),
        )?;
        let params = store
            .vars()
            .into_iter()
            .filter(|(name, _)| trainable(name))
            .collect();
        Ok(StageModel { vlm, params })
    }

    /// A fresh AdamW over the stage's parameters with the stage's settings and
    /// per-part learning rates.
    pub fn optimizer(&self, stages: &StagePlan, stage: &StageConfig) -> Result<AdamW, TrainError> {
        Ok(AdamW::new(
            self.params.clone(),
            AdamWConfig {
                beta1: stage.betas[0],
                beta2: stage.betas[1],
                eps: stage.eps,
                weight_decay: stage.weight_decay,
            },
        )?
        .with_lr_scales(|name| stages.part_lr(stage, name) / stage.lr))
    }
}

/// Optimizer steps in a stage: its `steps`, else `epochs` over its data.
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

/// Refuses a stage whose micro-batch cannot fit in the device's memory, before
/// it reads a single example (it used to grow until the system stopped it).
fn check_memory(plan: &Plan, index: usize, device: &candle_core::Device) -> Result<(), TrainError> {
    let Some(available) = vlmkit_pipeline::available_memory(device) else {
        return Ok(());
    };
    let batch = plan.recipe.stages[index].batch_size;
    let floor = plan.model.micro_batch_floor(batch);
    if floor <= u128::from(available) {
        return Ok(());
    }
    let gib = |bytes: u128| bytes as f64 / f64::from(1u32 << 30);
    Err(plan
        .recipe
        .error_at(
            &format!("stage.{index}.batch_size"),
            format!(
                "a micro-batch of {batch} examples needs at least {:.1} GiB (images, visual tokens and the attention over them), and {:.1} GiB are available: lower it, and raise `grad_accum` to keep the step's batch",
                gib(floor),
                gib(u128::from(available))
            ),
        )
        .into())
}

/// What a stage holds while it runs.
struct StageRun<'s> {
    index: usize,
    config: &'s StageConfig,
    total: u64,
    vlm: Vlm,
    params: Vec<(String, Var)>,
    builder: BatchBuilder,
    optimizer: AdamW,
    reader: StageReader,
    window: Window,
    /// Steps per `metrics.jsonl` record: `run.log_every`, or a tenth of a
    /// shorter stage (its loss curve gets points, not a dot).
    log_every: u64,
    /// Whether the first step's gradients were checked for parameters no loss reaches.
    checked_gradients: bool,
}

/// One optimizer step's micro-batches, summed.
#[derive(Default)]
struct Accumulated {
    grads: BTreeMap<String, Tensor>,
    loss: f64,
    terms: BTreeMap<String, f64>,
    tokens: usize,
}

impl<'p> Trainer<'p> {
    /// Runs stage `index` from where the run's state stands to its last step,
    /// ending with a checkpoint at its boundary.
    pub(super) fn run_stage(&mut self, index: usize) -> Result<(), TrainError> {
        let mut stage = self.start_stage(index)?;
        while self.state.stage_step < stage.total {
            let record = self.step(&mut stage)?;
            self.record(&mut stage, &record)?;
        }
        self.finish_stage(&mut stage)
    }

    fn start_stage(&mut self, index: usize) -> Result<StageRun<'p>, TrainError> {
        let plan = self.plan;
        let config = &plan.recipe.stages[index];
        let data = plan.train_data(index);
        let source = data.open()?;
        if source.is_empty() {
            return Err(plan
                .recipe
                .error_at(
                    &format!("stage.{index}"),
                    "the stage's training data is empty",
                )
                .into());
        }
        let total = stage_steps(config, source.len());
        check_memory(plan, index, &self.device)?;
        let resuming_here = self.state.stage == index && self.state.stage_step > 0;
        if !resuming_here {
            self.state.stage = index;
            self.state.stage_name = config.name.clone();
            self.state.stage_step = 0;
            self.state.samples_seen = 0;
        }
        let model = StageModel::build(plan, self.store, config, &self.unused)?;
        let builder = plan.stage_batch_builder(index, self.device.clone())?;
        let mut optimizer = model.optimizer(&plan.stages, config)?;
        let StageModel { vlm, params } = model;
        if resuming_here {
            let saved = self.optimizer_state.take().unwrap_or_default();
            optimizer.load_state(&saved, self.state.stage_step)?;
        }
        let reader = StageReader::new(
            source,
            plan.recipe.run.seed,
            &config.name,
            data.max_skipped(),
        );
        reader.check_at_start(self.observer)?;
        self.observer.stage_started(
            index,
            config,
            total,
            self.state.stage_step,
            &reader.source.describe(),
        );
        Ok(StageRun {
            index,
            config,
            total,
            vlm,
            params,
            builder,
            optimizer,
            reader,
            window: Window::default(),
            log_every: plan.recipe.run.log_every.min((total / 10).max(1)),
            checked_gradients: false,
        })
    }

    /// The gradients of one step's `grad_accum` micro-batches, each scaled by
    /// `1 / grad_accum`, summed in order.
    fn accumulate(&mut self, stage: &mut StageRun) -> Result<Accumulated, TrainError> {
        let accum = stage.config.grad_accum;
        let mut sum = Accumulated::default();
        for _ in 0..accum {
            let batch = stage.reader.next_batch(
                stage.config.batch_size,
                &stage.builder.collator,
                &mut self.state,
                &mut self.skips,
                self.observer,
            )?;
            let (examples, sequences): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|r| (r.example, r.sequence)).unzip();
            let out = forward_backward_tokenised(
                &stage.vlm,
                &stage.builder,
                &examples,
                sequences,
                &stage.params,
                1.0 / accum as f64,
                self.parallelism,
            )?;
            checks::finite(
                out.loss,
                self.state.global_step + 1,
                &stage.config.name,
                &self.last_checkpoint,
            )?;
            sum.loss += out.loss;
            for (k, v) in out.terms {
                *sum.terms.entry(k).or_default() += v;
            }
            sum.tokens += out.tokens;
            for (name, g) in out.grads {
                let g = match sum.grads.remove(&name) {
                    Some(acc) => (acc + g)?,
                    None => g,
                };
                sum.grads.insert(name, g);
            }
        }
        Ok(sum)
    }

    /// One optimizer step: accumulate, check, clip, apply.
    fn step(&mut self, stage: &mut StageRun) -> Result<StepRecord, TrainError> {
        let t0 = Instant::now();
        let config = stage.config;
        let sum = self.accumulate(stage)?;
        if !stage.checked_gradients {
            checks::every_parameter_reached(&config.name, &stage.params, &sum.grads)?;
            stage.checked_gradients = true;
        }
        let grad_norm = global_grad_norm(&sum.grads)?;
        checks::finite(
            grad_norm,
            self.state.global_step + 1,
            &config.name,
            &self.last_checkpoint,
        )?;
        let scale = match config.clip_norm {
            Some(c) if grad_norm > c => c / (grad_norm + 1e-6),
            _ => 1.0,
        };
        let lr = learning_rate(
            self.state.stage_step,
            stage.total,
            config.lr,
            config.warmup_ratio,
            config.schedule,
            config.min_lr_ratio,
        );
        stage.optimizer.step(&sum.grads, lr, scale)?;
        self.state.stage_step += 1;
        self.state.global_step += 1;
        let accum = config.grad_accum as f64;
        Ok(StepRecord {
            global_step: self.state.global_step,
            stage: config.name.clone(),
            stage_step: self.state.stage_step,
            stage_steps: stage.total,
            loss: sum.loss / accum,
            terms: sum.terms.into_iter().map(|(k, v)| (k, v / accum)).collect(),
            lr,
            grad_norm,
            tokens: sum.tokens,
            samples: config.batch_size * config.grad_accum,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// Reports a step, logs the window when `run.log_every` says so, and
    /// checkpoints mid-stage when `run.checkpoint_every` says so.
    fn record(&mut self, stage: &mut StageRun, record: &StepRecord) -> Result<(), TrainError> {
        let run = &self.plan.recipe.run;
        self.last_loss = Some(record.loss);
        self.observer.step(record);
        stage.window.add(record);
        let step = self.state.global_step;
        let log_now = step.is_multiple_of(stage.log_every);
        let checkpoint_now =
            step.is_multiple_of(run.checkpoint_every.max(1)) && self.state.stage_step < stage.total;
        if log_now || checkpoint_now {
            self.flush(&mut stage.window)?;
        }
        if checkpoint_now {
            self.checkpoint(Some(&stage.optimizer))?;
        }
        Ok(())
    }

    /// The stage's last window logged, and a checkpoint at the boundary: the
    /// next stage starts a fresh optimizer.
    fn finish_stage(&mut self, stage: &mut StageRun) -> Result<(), TrainError> {
        self.flush(&mut stage.window)?;
        self.observer.stage_finished(stage.index);
        self.state.stage = stage.index + 1;
        self.state.stage_step = 0;
        self.state.samples_seen = 0;
        self.checkpoint(None)
    }

    /// Writes the window's means to `metrics.jsonl`, if it holds a step.
    fn flush(&mut self, window: &mut Window) -> Result<(), TrainError> {
        if let Some(m) = window.take(self.started.elapsed().as_secs_f64()) {
            self.metrics.write(&m)?;
        }
        Ok(())
    }

    /// A checkpoint of the run as it stands (`optimizer` mid-stage).
    fn checkpoint(&mut self, optimizer: Option<&AdamW>) -> Result<(), TrainError> {
        self.metrics.sync()?;
        self.skips.sync()?;
        self.state.metrics_lines = self.metrics.lines;
        let dir = self.checkpointer.save(self.store, optimizer, &self.state)?;
        self.observer.checkpoint(&dir);
        self.last_checkpoint = Some(dir);
        Ok(())
    }
}
