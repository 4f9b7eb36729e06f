//! vlmkit's trainer.
//!
//! - [`plan`]: recipe → validated components (no tensors yet).
//! - [`source`]: where examples come from, and in which order.
//! - [`batch`]: examples → tensors.
//! - [`optim`]: AdamW, schedules, clipping.
//! - [`checkpoint`]: run directories, atomic checkpoints, resume.
//! - [`trainer`]: the stage loop, reporting to an [`trainer::Observer`].

pub mod batch;
pub mod bench;
pub mod checkpoint;
pub mod counts;
pub mod export;
pub mod optim;
pub mod parity;
pub mod plan;
pub mod progress;
pub mod source;
pub mod step;
pub mod trainer;

use std::path::PathBuf;

pub use checkpoint::{
    load_checkpoint, load_model, resolve_checkpoint, source_fingerprint, FrozenSource, LoadedModel,
    RunDir, TrainState,
};
pub use plan::Plan;
pub use trainer::{train, Observer, StepRecord, TrainSummary};

/// Why training (or loading a model) failed.
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
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error(
        "{} holds a run of a different recipe{}; delete it, or train into another directory (--out)",
        dir.display(),
        if differences.is_empty() { String::new() } else { format!(" ({})", differences.join("; ")) }
    )]
    DifferentRecipe {
        dir: PathBuf,
        /// `key: value there, value here` for the keys that differ (at most 8).
        differences: Vec<String>,
    },
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
    #[error("{0}")]
    Invalid(String),
}

impl From<vlmkit_recipe::RecipeError> for TrainError {
    fn from(error: vlmkit_recipe::RecipeError) -> Self {
        TrainError::Recipe(Box::new(error))
    }
}

impl From<vlmkit_data::DataError> for TrainError {
    fn from(error: vlmkit_data::DataError) -> Self {
        TrainError::Data(Box::new(error))
    }
}
