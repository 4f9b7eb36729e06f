//! Reading a stage's examples in its seeded order, skipping (and counting) those
//! whose image is missing or corrupt.

use vlmkit_data::Example;
use vlmkit_pipeline::data::ExampleSource;
use vlmkit_pipeline::TrainState;

use super::Observer;
use crate::order::Order;
use crate::TrainError;

/// A stage's data, read from the position its state records.
pub(super) struct StageReader {
    pub source: Box<dyn ExampleSource>,
    order: Order,
    /// The share of examples read that may be skipped.
    max_skipped: f64,
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
        }
    }

    /// The next `batch_size` examples, `state.samples_seen` advanced past them
    /// and past the skipped ones. Skips beyond `max_skipped` of the examples the
    /// stage has read, or a whole epoch without a usable example, end the run.
    pub(super) fn next_batch(
        &mut self,
        batch_size: usize,
        state: &mut TrainState,
        observer: &mut dyn Observer,
    ) -> Result<Vec<Example>, TrainError> {
        let mut examples = Vec::with_capacity(batch_size);
        let mut skipped_in_a_row = 0u64;
        while examples.len() < batch_size {
            let index = self.order.index(state.samples_seen);
            state.samples_seen += 1;
            match self.source.get(index) {
                Ok(example) => {
                    examples.push(example);
                    skipped_in_a_row = 0;
                }
                Err(error) if error.is_bad_image() => {
                    state.skipped_images += 1;
                    skipped_in_a_row += 1;
                    observer.example_skipped(&error, state.skipped_images);
                    let over_limit = state.skipped_images > 10
                        && state.skipped_images as f64
                            > self.max_skipped * state.samples_seen as f64;
                    if over_limit || skipped_in_a_row >= self.source.len() {
                        return Err(TrainError::TooManySkipped {
                            skipped: state.skipped_images,
                            read: state.samples_seen,
                            allowed: self.max_skipped,
                            last: Box::new(error),
                        });
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(examples)
    }
}
