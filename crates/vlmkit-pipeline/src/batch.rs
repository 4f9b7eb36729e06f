//! Examples → a [`VlmBatch`]: token sequences through the collator, images through
//! the encoder's preprocessing.

use candle_core::{Device, Tensor};
use vlmkit_core::{TokenSequence, VisionInfo, VlmBatch};
use vlmkit_data::processor::ImageProcessor;
use vlmkit_data::{mask, Collator, Example};

use crate::PipelineError;

/// Builds batches for one model.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    pub collator: Collator,
    pub vision: VisionInfo,
    pub device: Device,
    /// The token grid (rows, columns) a grounding loss compares region masks on;
    /// `None` when nothing reads the masks.
    pub grounding_grid: Option<(usize, usize)>,
    /// Images to the encoder's pixels; region masks follow the same geometry.
    pub processor: ImageProcessor,
}

impl BatchBuilder {
    /// A training batch (answers supervised).
    pub fn train(&self, examples: &[Example]) -> Result<VlmBatch, PipelineError> {
        let sequences = examples
            .iter()
            .map(|e| self.collator.sequence(e))
            .collect::<Result<Vec<_>, _>>()?;
        self.assemble(examples, sequences)
    }

    /// A generation batch (prompts up to the answer).
    pub fn prompts(&self, examples: &[Example]) -> Result<VlmBatch, PipelineError> {
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
    ) -> Result<VlmBatch, PipelineError> {
        let size = self.vision.image_size;
        let per = 3 * size * size;
        let mut data = vec![0f32; examples.len() * per];
        for (i, e) in examples.iter().enumerate() {
            if let Some(img) = &e.image {
                let (px, made) = self.processor.pixel_values(img);
                if made != (size, size) {
                    return Err(PipelineError::Example {
                        id: e.id.clone(),
                        message: format!(
                            "the image processor made {}×{} pixels of a {}×{} image, the encoder takes {size}×{size}",
                            made.0,
                            made.1,
                            img.height(),
                            img.width()
                        ),
                    });
                }
                data[i * per..(i + 1) * per].copy_from_slice(&px);
            }
        }
        let pixels = Tensor::from_vec(data, (examples.len(), 3, size, size), &self.device)?;
        let regions = examples
            .iter()
            .map(|e| match (self.grounding_grid, &e.image, &e.mask) {
                (Some((rows, cols)), Some(img), Some(m)) => {
                    // The image's window, in the mask's pixel units.
                    let [x0, y0, x1, y1] = self.processor.source_window(img.height(), img.width());
                    let sx = f64::from(m.width()) / f64::from(img.width());
                    let sy = f64::from(m.height()) / f64::from(img.height());
                    let window = [x0 * sx, y0 * sy, x1 * sx, y1 * sy];
                    mask::grid_coverage_in(m, window, rows as u32, cols as u32)
                        .map(Some)
                        .map_err(|err| PipelineError::Example {
                            id: e.id.clone(),
                            message: err.to_string(),
                        })
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
