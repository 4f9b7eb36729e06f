//! What a study measures while it trains a run, beside the trainer's own records:
//! each step's time and the process's peak resident memory, kept in the run
//! directory as `summary.json`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use vlmkit_recipe::StageConfig;
use vlmkit_train::{bench, Observer, StepRecord};

use crate::stats::median;
use crate::StudyError;

/// The file a study writes into a run directory after training it.
pub const SUMMARY_FILE: &str = "summary.json";

/// Training measurements of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeasures {
    /// Optimizer steps of the finished run.
    pub global_step: u64,
    /// The step the process that finished the run resumed from, if it resumed.
    pub resumed_from: Option<u64>,
    /// Steps that process trained and timed (all of them unless it resumed).
    pub timed_steps: usize,
    /// Median over the timed steps of a step's wall time: data, forward, backward
    /// and optimizer update (what `StepRecord::seconds` covers; checkpoint writes
    /// are not in it).
    pub step_time_median_s: Option<f64>,
    /// Peak resident set size of the process while it trained the run (Linux:
    /// `VmHWM`, reset when the run starts); `None` where it cannot be told apart
    /// from earlier work of the same process or the platform does not report it.
    pub peak_rss_mib: Option<f64>,
    /// Resident set size when the run started (what the process already held:
    /// the program, earlier runs' allocator caches), for reading the peak.
    pub start_rss_mib: Option<f64>,
    /// Wall time of that process's training.
    pub train_seconds: f64,
}

impl RunMeasures {
    /// Reads `summary.json` from a run directory; `None` when there is none.
    pub fn read(run_dir: &Path) -> Result<Option<RunMeasures>, StudyError> {
        let path = run_dir.join(SUMMARY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StudyError::Io { path, source }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StudyError::Unreadable {
                path,
                message: e.to_string(),
            })
    }

    /// Writes `summary.json` into a run directory (atomically).
    pub fn write(&self, run_dir: &Path) -> Result<(), StudyError> {
        let path = run_dir.join(SUMMARY_FILE);
        let json = serde_json::to_string_pretty(self).expect("measures serialise");
        vlmkit_core::fsutil::write_atomic(&path, json.as_bytes())
            .map_err(|source| StudyError::Io { path, source })
    }
}

/// Whether this process has trained a run already (its peak memory would count
/// towards the next run's unless the peak can be reset).
static TRAINED_BEFORE: AtomicBool = AtomicBool::new(false);

/// Tracks the process's peak resident memory over one run.
#[derive(Debug)]
pub struct PeakMemory {
    attributable: bool,
    start_mib: Option<f64>,
}

impl PeakMemory {
    /// Starts measuring: resets the kernel's high-water mark to the current
    /// resident size (Linux ≥ 4.0: `5` into `/proc/self/clear_refs`).
    pub fn start() -> PeakMemory {
        let reset = bench::reset_peak_rss();
        let earlier = TRAINED_BEFORE.swap(true, Ordering::SeqCst);
        PeakMemory {
            attributable: reset || !earlier,
            start_mib: bench::rss_mib(),
        }
    }

    /// The resident size when measuring started, in MiB.
    pub fn start_mib(&self) -> Option<f64> {
        self.start_mib
    }

    /// The peak since [`PeakMemory::start`], in MiB.
    pub fn peak_mib(&self) -> Option<f64> {
        if self.attributable {
            bench::peak_rss_mib()
        } else {
            None
        }
    }
}

/// Passes everything on to `inner` and keeps each step's time.
pub struct StepTimer<'a> {
    inner: &'a mut dyn Observer,
    seconds: Vec<f64>,
}

impl<'a> StepTimer<'a> {
    pub fn new(inner: &'a mut dyn Observer) -> Self {
        StepTimer {
            inner,
            seconds: Vec::new(),
        }
    }

    /// The times of the steps seen, in order.
    pub fn seconds(&self) -> &[f64] {
        &self.seconds
    }

    /// Their median.
    pub fn median_s(&self) -> Option<f64> {
        median(&self.seconds)
    }
}

impl Observer for StepTimer<'_> {
    fn stage_started(
        &mut self,
        index: usize,
        stage: &StageConfig,
        total_steps: u64,
        start_step: u64,
        data: &str,
    ) {
        self.inner
            .stage_started(index, stage, total_steps, start_step, data);
    }
    fn step(&mut self, record: &StepRecord) {
        self.seconds.push(record.seconds);
        self.inner.step(record);
    }
    fn checkpoint(&mut self, dir: &Path) {
        self.inner.checkpoint(dir);
    }
    fn stage_finished(&mut self, index: usize) {
        self.inner.stage_finished(index);
    }
    fn message(&mut self, text: &str) {
        self.inner.message(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_round_trip_through_the_run_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RunMeasures::read(dir.path()).unwrap(), None);
        let m = RunMeasures {
            global_step: 12,
            resumed_from: Some(5),
            timed_steps: 7,
            step_time_median_s: Some(0.0125),
            peak_rss_mib: Some(81.5),
            start_rss_mib: Some(20.0),
            train_seconds: 0.3,
        };
        m.write(dir.path()).unwrap();
        assert_eq!(RunMeasures::read(dir.path()).unwrap(), Some(m));
        std::fs::write(dir.path().join(SUMMARY_FILE), "{").unwrap();
        let err = RunMeasures::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains(SUMMARY_FILE), "{err}");
    }

    #[test]
    fn the_timer_keeps_step_times_and_passes_steps_on() {
        struct Count(usize);
        impl Observer for Count {
            fn step(&mut self, _: &StepRecord) {
                self.0 += 1;
            }
        }
        let mut inner = Count(0);
        let mut timer = StepTimer::new(&mut inner);
        for s in [0.3, 0.1, 0.2] {
            timer.step(&StepRecord {
                global_step: 1,
                stage: "s".into(),
                stage_step: 1,
                stage_steps: 3,
                loss: 1.0,
                terms: Default::default(),
                lr: 0.1,
                grad_norm: 1.0,
                tokens: 1,
                samples: 1,
                seconds: s,
            });
        }
        assert_eq!(timer.median_s(), Some(0.2));
        assert_eq!(timer.seconds().len(), 3);
        assert_eq!(inner.0, 3);
    }
}
