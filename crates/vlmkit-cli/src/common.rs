//! Pieces every command uses: the connector registry, recipe loading, threads.

use std::path::Path;

use anyhow::Result;
use vlmkit_plugin::Registry;
use vlmkit_recipe::Recipe;
use vlmkit_train::Plan;

/// The built-in connectors.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    connector_mlp::register(&mut registry).expect("built-in connectors have distinct kinds");
    connector_ccra::register(&mut registry).expect("built-in connectors have distinct kinds");
    connector_dense::register(&mut registry).expect("built-in connectors have distinct kinds");
    connector_mmfuser::register(&mut registry).expect("built-in connectors have distinct kinds");
    connector_igva::register(&mut registry).expect("built-in connectors have distinct kinds");
    connector_age::register(&mut registry).expect("built-in connectors have distinct kinds");
    registry
}

/// Loads and validates a recipe with `--set` overrides.
pub fn plan(recipe: &Path, overrides: &[String]) -> Result<Plan> {
    let recipe = Recipe::load(recipe, overrides)?;
    Ok(Plan::new(recipe, &registry(), None)?)
}

/// Loads a recipe for inspection only: pretrained weights and the tokenizer file
/// need not exist (`vlmkit params`, `vlmkit recipe check`).
pub fn inspect_plan(recipe: &Path, overrides: &[String]) -> Result<Plan> {
    let recipe = Recipe::load(recipe, overrides)?;
    Ok(Plan::inspect(recipe, &registry())?)
}

/// Runs every op single-threaded: the trainer (and evaluation) parallelise over
/// parts of a batch instead, which is what pays at these model sizes. Must run
/// before the first tensor op (candle reads the variable when it sizes its pools).
pub fn single_threaded_ops() {
    std::env::set_var("RAYON_NUM_THREADS", "1");
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global();
    vlmkit_core::ops::set_intra_op_threads(1);
}

/// Prints an error chain: recipe errors are already formatted as diagnostics.
pub fn report_error(err: &anyhow::Error) {
    if err.downcast_ref::<vlmkit_recipe::RecipeError>().is_some() {
        eprintln!("{err}");
        return;
    }
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}
