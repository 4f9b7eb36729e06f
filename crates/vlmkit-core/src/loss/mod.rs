//! Loss terms the host computes over a model's forward pass, behind one small
//! trait, so that adding one is a new file and a registration.
//!
//! A stage's `losses` table names the terms it trains on and their weights. A
//! [`HostLoss`] says what its value averages over ([`Average`]) — which is how a
//! batch split into parts weighs each part's value so that the parts' gradients
//! sum to the whole batch's — what it needs from the batch (region masks), which
//! connectors it can train, and computes its value from a [`LossInput`].
//! `lm` ([`LmLoss`]) and `dice` ([`DiceLoss`]) are the built-in ones; a
//! connector's own terms ([`crate::ConnectorNeeds::aux_losses`]) average over
//! samples.

mod dice;
mod lm;

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{Result, Tensor};

pub use dice::DiceLoss;
pub use lm::LmLoss;

use crate::model::ConnectorNeeds;
use crate::vlm::{Vlm, VlmBatch};

/// What a loss term's value on a batch is a mean over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Average {
    /// The batch's supervised target tokens.
    SupervisedTokens,
    /// The batch's samples.
    Samples,
    /// The batch's samples that carry a region mask.
    MaskedSamples,
}

/// The counts of a batch that loss terms average over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounts {
    pub supervised_tokens: usize,
    pub samples: usize,
    pub masked_samples: usize,
}

impl Average {
    /// How many items of a batch with `counts` this average is over.
    pub fn count(self, counts: &BatchCounts) -> usize {
        match self {
            Average::SupervisedTokens => counts.supervised_tokens,
            Average::Samples => counts.samples,
            Average::MaskedSamples => counts.masked_samples,
        }
    }
}

/// What a host loss can read of one batch's forward pass.
pub struct LossInput<'a> {
    pub vlm: &'a Vlm,
    pub batch: &'a VlmBatch,
    /// The decoder's final hidden states (`B×S×d`, compute dtype), visual tokens
    /// in place, sequences padded on the right.
    pub hidden: &'a Tensor,
    /// Per sample, the training target of each of the `S` positions
    /// ([`crate::ops::IGNORE_INDEX`] where none); position `p` predicts `labels[p + 1]`.
    pub labels: &'a [Vec<i64>],
    /// Per sample, which of the `S` positions hold a token.
    pub valid: &'a [Vec<bool>],
    /// Every map the connector exposed, its decoder hooks' included.
    pub maps: &'a BTreeMap<String, Tensor>,
}

/// A loss term the host computes.
pub trait HostLoss: Send + Sync {
    /// The name a stage's `losses` table weighs it by.
    fn name(&self) -> &'static str;

    /// One line on what it is.
    fn summary(&self) -> &'static str;

    /// What its value on a batch is a mean over.
    fn averages_over(&self) -> Average;

    /// Whether batches must carry each sample's region mask, area-averaged on
    /// the connector's grounding grid ([`VlmBatch::regions`]).
    fn reads_region_masks(&self) -> bool {
        false
    }

    /// Refuses, before any tensor exists, a connector (of kind `connector`) it
    /// cannot train; the message says why.
    fn check(&self, connector: &str, needs: &ConnectorNeeds) -> std::result::Result<(), String> {
        let _ = (connector, needs);
        Ok(())
    }

    /// Its value on a batch (a scalar), or `None` when the batch holds nothing
    /// it averages over (no supervised token, no region mask).
    fn compute(&self, input: &LossInput) -> Result<Option<Tensor>>;
}

impl std::fmt::Debug for dyn HostLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostLoss({})", self.name())
    }
}

/// Two losses claim the same name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("loss `{0}` is registered twice")]
pub struct DuplicateLoss(pub String);

/// The host losses a process knows, in the order they were registered.
#[derive(Clone, Default)]
pub struct LossRegistry {
    losses: Vec<Arc<dyn HostLoss>>,
}

impl std::fmt::Debug for LossRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl LossRegistry {
    /// `lm` and `dice`.
    pub fn builtin() -> Self {
        let mut registry = Self::default();
        registry
            .register(Arc::new(LmLoss))
            .and_then(|()| registry.register(Arc::new(DiceLoss)))
            .expect("the built-in losses have distinct names");
        registry
    }

    pub fn register(&mut self, loss: Arc<dyn HostLoss>) -> std::result::Result<(), DuplicateLoss> {
        if self.get(loss.name()).is_some() {
            return Err(DuplicateLoss(loss.name().to_string()));
        }
        self.losses.push(loss);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn HostLoss>> {
        self.losses.iter().find(|loss| loss.name() == name)
    }

    /// Every name, in registration order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.losses.iter().map(|loss| loss.name())
    }
}
