//! Recipes: TOML experiment descriptions, loaded with `extends` chains and `--set`
//! overrides, validated against the schema, with every error pointing at the file,
//! line and key (or override) responsible.

mod error;
mod keys;
mod loader;
mod recipe;
mod schema;
pub mod settings;

pub use error::{Location, Origin, RecipeError, RecipeErrorKind};
pub use recipe::Recipe;
pub use schema::{EvalBenchmark, EvalConfig, PluginsConfig, RunConfig, Schedule, StageConfig};
pub use settings::{Settings, SettingsError};
