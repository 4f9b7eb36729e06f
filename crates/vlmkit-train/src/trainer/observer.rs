//! What the training loop reports, and to whom.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use vlmkit_recipe::StageConfig;

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

/// Receives progress from [`super::train`] (progress bars, logs, tests).
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
    /// An example was skipped (its image missing or corrupt, its record or
    /// text unusable); `skipped` counts them over the run so far.
    fn example_skipped(&mut self, skip: &Skip, skipped: u64) {
        let _ = (skip, skipped);
    }
}

/// An example training skipped: a line of `skipped.jsonl`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Skip {
    pub stage: String,
    /// The file (or built-in data) it comes from.
    pub source: String,
    /// Its index there.
    pub record: u64,
    /// Why, naming the file and record.
    pub reason: String,
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
    /// Examples skipped over the run (listed in `skipped.jsonl`).
    pub skipped: u64,
    /// Examples kept with their text cut to the model's length.
    pub truncated: u64,
}
