//! `metrics.jsonl` (means over each logging window) and the loss curve drawn
//! from it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vlmkit_plot::{LinePlot, Series};

use super::StepRecord;
use crate::TrainError;

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

/// The steps since the last logged line.
#[derive(Default)]
pub(super) struct Window {
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
    pub(super) fn add(&mut self, r: &StepRecord) {
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

    /// The window's means, and an empty window; `None` when no step was added.
    pub(super) fn take(&mut self, elapsed: f64) -> Option<MetricsRecord> {
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

/// Reads `metrics.jsonl`.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRecord>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(TrainError::io(path))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| TrainError::Metrics {
                path: path.to_path_buf(),
                line: i + 1,
                message: e.to_string(),
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
    plot.save_png(out, 900, 520).map_err(|e| TrainError::Plot {
        path: out.to_path_buf(),
        message: e.to_string(),
    })
}
