//! Comparison studies: several recipes (`vlmkit compare`) or one recipe over a
//! grid of settings (`vlmkit sweep`), each trained and evaluated over several
//! seeds with the same trainer and evaluator as `vlmkit train` / `vlmkit eval`,
//! then aggregated per question family (mean and Student's t 95% interval over
//! seeds) beside what each connector costs (parameters, step time, peak memory).
//!
//! ```text
//! studies/<name>/
//!   report.md  report.csv  runs.csv  study.json  accuracy.png
//!   runs/<arm>/seed-<s>/      a run directory (recipe.toml, metrics.jsonl, checkpoints/, final/)
//!     summary.json            step times and peak memory, written after training
//!     eval/                   report.json, predictions.jsonl, accuracy.png
//! ```
//!
//! - [`design`]: the arms, seeds and shared overrides ([`StudySpec`], [`GridAxis`]).
//! - [`runner`]: every run planned and validated up front ([`Study::plan`]), then
//!   trained, evaluated or reused ([`Study::run`]).
//! - [`measure`]: step times and peak memory recorded while training.
//! - [`stats`]: means and confidence intervals.
//! - [`report`]: the tables, CSV, JSON and chart.

pub mod design;
pub mod measure;
pub mod report;
pub mod runner;
pub mod stats;

use std::path::PathBuf;

pub use design::{Arm, GridAxis, StudyKind, StudySpec};
pub use measure::RunMeasures;
pub use report::{ArmSummary, RunResult, RunScores, StudyReport};
pub use runner::{PlannedRun, RunAction, RunState, Study, StudyObserver};
pub use stats::{t_975, Estimate};

/// Why a study could not be planned, run or reported.
#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    /// A recipe (with the study's and the arm's overrides) is invalid; located at
    /// file, line and key. Boxed, as elsewhere: the diagnostic is large.
    #[error(transparent)]
    Recipe(Box<vlmkit_recipe::RecipeError>),
    #[error(transparent)]
    Train(Box<vlmkit_train::TrainError>),
    #[error(transparent)]
    Eval(Box<vlmkit_eval::EvalError>),
    #[error(transparent)]
    Pipeline(Box<vlmkit_pipeline::PipelineError>),
    /// A run failed while training or evaluating (the reason is the source).
    #[error("{run} ({}) failed", dir.display())]
    Run {
        run: String,
        dir: PathBuf,
        #[source]
        source: Box<StudyError>,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Unreadable { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

vlmkit_core::from_boxed!(StudyError {
    Recipe: vlmkit_recipe::RecipeError,
});

impl From<vlmkit_train::TrainError> for StudyError {
    fn from(error: vlmkit_train::TrainError) -> Self {
        match error {
            vlmkit_train::TrainError::Recipe(e) => StudyError::Recipe(e),
            other => StudyError::Train(Box::new(other)),
        }
    }
}

impl From<vlmkit_eval::EvalError> for StudyError {
    fn from(error: vlmkit_eval::EvalError) -> Self {
        match error {
            vlmkit_eval::EvalError::Recipe(e) => StudyError::Recipe(e),
            other => StudyError::Eval(Box::new(other)),
        }
    }
}

impl From<vlmkit_pipeline::PipelineError> for StudyError {
    fn from(error: vlmkit_pipeline::PipelineError) -> Self {
        match error {
            vlmkit_pipeline::PipelineError::Recipe(e) => StudyError::Recipe(e),
            other => StudyError::Pipeline(Box::new(other)),
        }
    }
}
