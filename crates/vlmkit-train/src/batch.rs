//! Examples → a [`VlmBatch`]: token sequences through the collator, images through
//! the encoder's preprocessing.

use candle_core::{Device, Tensor};
use vlmkit_core::{TokenSequence, VisionInfo, VlmBatch};
use vlmkit_data::{pixels, Collator, Example};

use crate::TrainError;

/// Builds batches for one model.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    pub collator: Collator,
    pub vision: VisionInfo,
    pub device: Device,
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
        Ok(VlmBatch { pixels, sequences })
    }
}
