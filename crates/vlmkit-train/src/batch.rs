//! Examples → a [`VlmBatch`]: token sequences through the collator, images through
//! the encoder's preprocessing.

use candle_core::{Device, Tensor};
use vlmkit_core::{TokenSequence, VisionInfo, VlmBatch};
use vlmkit_data::{mask, pixels, Collator, Example};

use crate::TrainError;

/// Builds batches for one model.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    pub collator: Collator,
    pub vision: VisionInfo,
    pub device: Device,
    /// The token grid (rows, columns) a grounding loss compares region masks on;
    /// `None` when nothing reads the masks.
    pub grounding_grid: Option<(usize, usize)>,
}

impl BatchBuilder {
    /// A training batch (answers supervised).
    pub fn train(&self, examples: &[Example]) -> Result<VlmBatch, TrainError> {
        let sequences = examples
            .iter()
            .map(|e| self.collator.sequence(e))
            .collect::<Result<Vec<_>, _>>()?;
        self.assemble(examples, sequences)
    }

    /// A generation batch (prompts up to the answer).
    pub fn prompts(&self, examples: &[Example]) -> Result<VlmBatch, TrainError> {
        let sequences = examples
            .iter()
            .map(|e| self.collator.prompt(e))
            .collect::<Result<Vec<_>, _>>()?;
        self.assemble(examples, sequences)
    }

    /// How many of `examples` carry a region mask the batch will hold.
    pub fn masked(&self, examples: &[Example]) -> usize {
        match self.grounding_grid {
            Some(_) => examples
                .iter()
                .filter(|e| e.image.is_some() && e.mask.is_some())
                .count(),
            None => 0,
        }
    }

    /// A batch of already tokenised sequences and their examples' images.
    pub fn assemble(
        &self,
        examples: &[Example],
        sequences: Vec<TokenSequence>,
    ) -> Result<VlmBatch, TrainError> {
        let size = self.vision.image_size;
        let per = 3 * size * size;
        let mut data = vec![0f32; examples.len() * per];
        for (i, e) in examples.iter().enumerate() {
            if let Some(img) = &e.image {
                let px = pixels(
                    img,
                    size as u32,
                    self.vision.image_mean,
                    self.vision.image_std,
                );
                data[i * per..(i + 1) * per].copy_from_slice(&px);
            }
        }
        let pixels = Tensor::from_vec(data, (examples.len(), 3, size, size), &self.device)?;
        let regions = examples
            .iter()
            .map(|e| match (self.grounding_grid, &e.image, &e.mask) {
                (Some((rows, cols)), Some(_), Some(m)) => {
                    mask::grid_coverage(m, rows as u32, cols as u32)
                        .map(Some)
                        .map_err(|err| TrainError::Invalid(format!("example {}: {err}", e.id)))
                }
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VlmBatch {
            pixels,
            sequences,
            regions,
        })
    }
}
