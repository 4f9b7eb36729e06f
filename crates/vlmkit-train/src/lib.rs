//! vlmkit's trainer: the training loop over a [`vlmkit_pipeline::Plan`].
//!
//! - [`trainer`]: the stage loop, in named pieces (resume, reading, accumulation,
//!   checks, logging, checkpointing), reporting to an [`Observer`].
//! - [`step`]: one batch's forward and backward, split into parts on worker threads.
//! - [`optim`]: AdamW, schedules, clipping.
//! - [`order`]: the seeded order a stage reads its data in.
//! - [`progress`]: the progress display; [`bench`]: the phases of a step, timed.

pub mod bench;
pub mod optim;
pub mod order;
pub mod progress;
pub mod step;
pub mod trainer;

use std::path::PathBuf;

pub use trainer::{train, Observer, Skip, StageModel, StepRecord, TrainSummary};
use vlmkit_pipeline::PipelineError;

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    // Boxed: located recipe and data diagnostics are large, and every fallible
    // call pays for the biggest variant.
    #[error(transparent)]
    Recipe(Box<vlmkit_recipe::RecipeError>),
    #[error(transparent)]
    Data(Box<vlmkit_data::DataError>),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The model, the run directory or a checkpoint.
    #[error(transparent)]
    Pipeline(Box<PipelineError>),
    #[error(
        "the loss became {value} at step {step} (stage `{stage}`); training stopped. The last good checkpoint is {}",
        last_checkpoint.as_ref().map_or("none (no checkpoint was written yet)".to_string(), |p| p.display().to_string())
    )]
    NonFinite {
        step: u64,
        stage: String,
        value: f64,
        last_checkpoint: Option<PathBuf>,
    },
    /// Weights no checkpoint is written of (the previous one stays the newest).
    #[error("weight `{name}` holds NaN or infinite values at step {step}; no checkpoint is written of it")]
    NonFiniteWeights { step: u64, name: String },
    #[error(
        "stage `{stage}`: {} trainable parameter(s) receive no gradient, e.g. {}; they do not influence the loss with this recipe",
        missing.len(),
        missing.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
    )]
    NoGradient { stage: String, missing: Vec<String> },
    #[error(
        "a batch of {examples} examples has no supervised token (ids {ids}…): every answer is empty or was cut by the length limit"
    )]
    NoSupervisedToken { examples: usize, ids: String },
    #[error(
        "{skipped} of the {read} {} cannot be used (the data's `max_skipped` allows {:.1}%; `vlmkit data check` lists them); {}: {last}",
        if *at_start { "records" } else { "examples read so far" },
        100.0 * allowed,
        if *at_start { "the first" } else { "the last" }
    )]
    TooManySkipped {
        skipped: u64,
        read: u64,
        /// The share the data allows.
        allowed: f64,
        /// Why the first (at start) or last skipped one was skipped.
        last: String,
        /// Found by the check before any step.
        at_start: bool,
    },
    #[error("every loss term has weight 0")]
    NothingToTrain,
    #[error("a training worker thread panicked")]
    WorkerPanicked,
    #[error("{}: line {line}: {message}", path.display())]
    Metrics {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}: {message}", path.display())]
    Plot { path: PathBuf, message: String },
}

vlmkit_core::from_boxed!(TrainError {
    Recipe: vlmkit_recipe::RecipeError,
    Data: vlmkit_data::DataError,
});

impl From<PipelineError> for TrainError {
    /// A recipe error stays one (studies and the CLI treat it apart).
    fn from(error: PipelineError) -> Self {
        match error {
            PipelineError::Recipe(e) => TrainError::Recipe(e),
            other => TrainError::Pipeline(Box::new(other)),
        }
    }
}

impl TrainError {
    /// An I/O error about `path`.
    pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
        move |source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
