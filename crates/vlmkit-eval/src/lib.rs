//! Evaluation: generate answers for an eval split, score them with every scorer
//! that applies — accuracy per question family against chance and majority
//! baselines, POPE metrics for yes/no existence questions, and whatever scorers
//! a user registers — and write the reports (table, JSON, PNG).
//!
//! - [`run`]: answering an eval split with a loaded model, writing the outputs.
//! - [`analysis`]: the attention metrics of `vlmkit analyze` (consistency,
//!   grounding, image reliance), on plain maps.
//! - [`benchmark`]: answering a published benchmark's question file as LLaVA's
//!   scripts do, for `vlmkit score` (crate `vlmkit-benchmarks`).
//! - [`scorer`]: the [`Scorer`] trait, the built-in scorers and their registry.
//! - [`EvalReport`]: the overall numbers and each scorer's results.

pub mod analysis;
pub mod benchmark;
mod prediction;
mod report;
pub mod run;
pub mod scorer;

use std::path::PathBuf;

pub use prediction::{normalize_answer, AnswerMatch, Prediction};
pub use report::{score, score_with, EvalReport};
pub use run::{
    evaluate, evaluate_and_save, generate_answers, read_predictions, save_outputs, EvalOptions,
    CHART_FILE, PREDICTIONS_FILE, REPORT_FILE,
};
pub use scorer::{
    DynScorer, FamilyScore, FamilyScorer, FamilyScores, PopeScore, PopeScorer, PopeScores, Scorer,
    ScorerRegistry,
};
use vlmkit_pipeline::PipelineError;

/// Why an evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    // Boxed: located diagnostics are large.
    #[error(transparent)]
    Recipe(Box<vlmkit_recipe::RecipeError>),
    #[error(transparent)]
    Data(Box<vlmkit_data::DataError>),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The model, its run directory or its checkpoint.
    #[error(transparent)]
    Pipeline(Box<PipelineError>),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Plot { path: PathBuf, message: String },
    /// A benchmark's question file or image.
    #[error("{}: {message}", path.display())]
    Benchmark { path: PathBuf, message: String },
    /// Reading or scoring a benchmark's files.
    #[error(transparent)]
    Score(Box<vlmkit_benchmarks::BenchmarkError>),
}

impl From<vlmkit_benchmarks::BenchmarkError> for EvalError {
    fn from(error: vlmkit_benchmarks::BenchmarkError) -> Self {
        EvalError::Score(Box::new(error))
    }
}

vlmkit_core::from_boxed!(EvalError {
    Recipe: vlmkit_recipe::RecipeError,
    Data: vlmkit_data::DataError,
});

impl From<PipelineError> for EvalError {
    /// A recipe error stays one (studies and the CLI treat it apart).
    fn from(error: PipelineError) -> Self {
        match error {
            PipelineError::Recipe(e) => EvalError::Recipe(e),
            other => EvalError::Pipeline(Box::new(other)),
        }
    }
}
