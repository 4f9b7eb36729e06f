//! What stops a run: a loss or gradient that is not a finite number, and a
//! trainable parameter that no loss reaches.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{Tensor, Var};

use crate::TrainError;

/// Refuses a non-finite loss or gradient norm `value` at `step`, naming the
/// last good checkpoint.
pub(super) fn finite(
    value: f64,
    step: u64,
    stage: &str,
    last_checkpoint: &Option<PathBuf>,
) -> Result<(), TrainError> {
    if value.is_finite() {
        return Ok(());
    }
    Err(TrainError::NonFinite {
        step,
        stage: stage.to_string(),
        value,
        last_checkpoint: last_checkpoint.clone(),
    })
}

/// Refuses a stage in which some trainable parameter received no gradient: it
/// does not influence the loss, so training it is a mistake in the recipe.
pub(super) fn every_parameter_reached(
    stage: &str,
    params: &[(String, Var)],
    grads: &BTreeMap<String, Tensor>,
) -> Result<(), TrainError> {
    let missing: Vec<String> = params
        .iter()
        .filter(|(n, _)| !grads.contains_key(n))
        .map(|(n, _)| n.clone())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(TrainError::NoGradient {
            stage: stage.to_string(),
            missing,
        })
    }
}
