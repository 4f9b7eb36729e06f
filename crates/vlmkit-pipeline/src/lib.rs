//! From a recipe to a model on a device, and what a run leaves behind.
//!
//! - [`Components`]: the registries a recipe's names are looked up in
//!   (connectors and plugins, vision encoders, host losses).
//! - [`plan`]: recipe → validated components (no tensors yet), in three parts:
//!   the model, its inputs, its stages.
//! - [`data`]: the data sources a recipe names; [`batch`]: examples → tensors.
//! - [`checkpoint`]: run directories, atomic checkpoints, and [`load_model`],
//!   which reads a trained model back for evaluation, inference and export.
//! - [`counts`] (parameters per component), [`parity`] (a connector on tensors
//!   from a file), [`export`] (transformers' LLaVA format), [`device`].
//!
//! The trainer (`vlmkit-train`), the evaluator (`vlmkit-eval`) and the studies
//! (`vlmkit-study`) are built on this crate; it knows nothing of them.

pub mod batch;
pub mod checkpoint;
mod components;
pub mod counts;
pub mod data;
pub mod device;
pub mod export;
mod load;
pub mod parity;
pub mod plan;

use std::path::PathBuf;

pub use checkpoint::{
    load_checkpoint, resolve_checkpoint, source_fingerprint, FrozenSource, RunDir, TrainState,
};
pub use components::Components;
pub use device::{available_memory, describe_device, select_device};
pub use load::{
    checkpoint_plan, first_non_finite, load_model, restore_frozen, untrained_model, LoadedModel,
};
pub use plan::Plan;

/// Why a recipe could not become a model, or a run directory could not be read
/// or written.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
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
    /// A part the recipe reads with `from` could not be read as it is.
    #[error(transparent)]
    Pretrained(Box<vlmkit_models::hf::HfError>),
    #[error("{}: {missing} weight(s) of {what} are missing, e.g. {examples}", path.display())]
    PretrainedIncomplete {
        path: PathBuf,
        what: &'static str,
        missing: usize,
        examples: String,
    },
    #[error("unknown device `{0}`")]
    UnknownDevice(String),
    #[error("device `{name}` is not available ({reason}); this build may lack the `cuda` feature")]
    DeviceUnavailable { name: String, reason: String },
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] checkpoint::CheckpointError),
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
    /// Another process holds the run directory ([`RunDir::lock`]).
    #[error(
        "{} is in use by another vlmkit{}; wait for it to finish, or train into another directory (--out)",
        dir.display(),
        match holder { Some(pid) => format!(" (pid {pid})"), None => String::new() }
    )]
    RunLocked { dir: PathBuf, holder: Option<u32> },
    /// An example the model cannot take as it is.
    #[error("example {id}: {message}")]
    Example { id: String, message: String },
    #[error("the recipe has {stages} stage(s); there is no stage {stage}")]
    NoStage { stages: usize, stage: usize },
    /// The export format has no place for something the run holds.
    #[error("{0}")]
    ExportRefused(String),
}

vlmkit_core::from_boxed!(PipelineError {
    Recipe: vlmkit_recipe::RecipeError,
    Data: vlmkit_data::DataError,
});

impl PipelineError {
    /// An I/O error about `path`.
    pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> PipelineError + '_ {
        move |source| PipelineError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
