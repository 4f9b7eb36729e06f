//! `lm`: next-token cross-entropy over the supervised positions, the logits
//! computed only there.

use candle_core::{DType, Result, Tensor};

use super::{Average, HostLoss, LossInput};
use crate::ops::{self, IGNORE_INDEX};

/// The language-model loss.
pub struct LmLoss;

impl HostLoss for LmLoss {
    fn name(&self) -> &'static str {
        "lm"
    }

    fn summary(&self) -> &'static str {
        "next-token cross-entropy over the supervised (answer) tokens"
    }

    fn averages_over(&self) -> Average {
        Average::SupervisedTokens
    }

    fn compute(&self, input: &LossInput) -> Result<Option<Tensor>> {
        let (b, s, d) = input.hidden.dims3()?;
        // Rows whose next token is supervised, and those targets.
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (i, labels) in input.labels.iter().enumerate() {
            for p in 0..s.saturating_sub(1) {
                let target = labels[p + 1];
                if target != IGNORE_INDEX {
                    rows.push((i * s + p) as u32);
                    targets.push(target);
                }
            }
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let rows = Tensor::from_vec(rows, targets.len(), input.hidden.device())?;
        let picked = input.hidden.reshape((b * s, d))?.index_select(&rows, 0)?;
        let logits = input.vlm.llm.logits(&picked)?.to_dtype(DType::F32)?;
        ops::cross_entropy(&logits, &targets).map(Some)
    }
}
