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
