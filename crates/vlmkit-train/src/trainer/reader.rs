//! Reading a stage's examples in its seeded order and tokenising them, skipping
//! (and counting, and listing in `skipped.jsonl`) the ones that cannot be used:
//! a missing or corrupt image or mask, a record that does not parse, placeholders
//! that do not match the image, text too long for the model to keep an answer.

use std::path::PathBuf;

use vlmkit_core::TokenSequence;
use vlmkit_data::{Collator, DataError, Example, RecordRef};
use vlmkit_pipeline::data::ExampleSource;
use vlmkit_pipeline::TrainState;

use super::jsonl::JsonLines;
use super::{Observer, Skip};
use crate::order::Order;
use crate::TrainError;

/// A stage's data, read from the position its state records.
pub(super) struct StageReader {
    pub source: Box<dyn ExampleSource>,
    order: Order,
    /// The share of examples read that may be skipped.
    max_skipped: f64,
    stage: String,
}

/// An example and its tokens, ready for a batch.
pub(crate) struct Ready {
    pub example: Example,
    pub sequence: TokenSequence,
}

impl StageReader {
    pub(super) fn new(
        source: Box<dyn ExampleSource>,
        seed: u64,
        stage: &str,
        max_skipped: f64,
    ) -> Self {
        let order = Order::new(source.len(), seed, stage);
        Self {
            source,
            order,
            max_skipped,
            stage: stage.to_string(),
        }
    }

    /// Refuses, before any step, data whose check at open found more unusable
    /// records than `max_skipped` allows; says how many will be skipped else.
    pub(super) fn check_at_start(&self, observer: &mut dyn Observer) -> Result<(), TrainError> {
        let unusable = self.source.unusable();
        let Some(&first) = unusable.first() else {
            return Ok(());
        };
        let count = unusable.len() as u64;
        let first = self.skip(first, self.source.get(first).err());
        let len = self.source.len();
        if over_limit(count, len, self.max_skipped) {
            return Err(TrainError::TooManySkipped {
                skipped: count,
                read: len,
                allowed: self.max_skipped,
                last: first.reason,
                at_start: true,
            });
        }
        observer.message(&format!(
            "{}: {count} of {len} records cannot be used and will be skipped (`vlmkit data check` lists them), e.g. {}",
            self.source.origin(),
            first.reason
        ));
        Ok(())
    }

    /// The next `batch_size` usable examples, tokenised; `state.samples_seen`
    /// advanced past them and past the skipped ones. Skips beyond `max_skipped`
    /// of the examples the stage has read, or a whole epoch without a usable
    /// example, end the run.
    pub(super) fn next_batch(
        &mut self,
        batch_size: usize,
        collator: &Collator,
        state: &mut TrainState,
        skips: &mut JsonLines,
        observer: &mut dyn Observer,
    ) -> Result<Vec<Ready>, TrainError> {
        let mut batch = Vec::with_capacity(batch_size);
        let mut skipped_in_a_row = 0u64;
        while batch.len() < batch_size {
            let index = self.order.index(state.samples_seen);
            state.samples_seen += 1;
            let ready = self.source.get(index).and_then(|example| {
                let (sequence, cut) = collator.sequence_cut(&example).map_err(|e| {
                    // The collator names the example; the skip names the record.
                    DataError::InvalidRecord {
                        path: PathBuf::from(self.source.origin()),
                        record: RecordRef {
                            index: index as usize,
                            id: Some(example.id.clone()),
                        },
                        reason: match e {
                            DataError::Unusable { reason, .. } => reason,
                            other => other.to_string(),
                        },
                    }
                })?;
                Ok((Ready { example, sequence }, cut))
            });
            match ready {
                Ok((ready, cut)) => {
                    state.truncated += u64::from(cut.is_some());
                    batch.push(ready);
                    skipped_in_a_row = 0;
                }
                Err(error) if error.is_record_problem() => {
                    let skip = self.skip(index, Some(error));
                    state.skipped += 1;
                    skipped_in_a_row += 1;
                    skips.write(&skip)?;
                    observer.example_skipped(&skip, state.skipped);
                    let over = over_limit(state.skipped, state.samples_seen, self.max_skipped);
                    if over || skipped_in_a_row >= self.source.len() {
                        return Err(TrainError::TooManySkipped {
                            skipped: state.skipped,
                            read: state.samples_seen,
                            allowed: self.max_skipped,
                            last: skip.reason,
                            at_start: false,
                        });
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(batch)
    }

    fn skip(&self, index: u64, error: Option<DataError>) -> Skip {
        Skip {
            stage: self.stage.clone(),
            source: self.source.origin(),
            record: index,
            reason: error.map_or_else(|| "unusable".to_string(), |e| e.to_string()),
        }
    }
}

/// More skipped than `max_skipped` of `read` allows (the first ten are always
/// allowed: small data would otherwise stop at its first bad record).
fn over_limit(skipped: u64, read: u64, max_skipped: f64) -> bool {
    skipped > 10 && skipped as f64 > max_skipped * read as f64
}
