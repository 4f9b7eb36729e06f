//! Region masks from a segmentation teacher, for the mask-guided (Dice) loss.
//!
//! [`SamTeacher`] runs Segment Anything (candle-transformers' implementation,
//! inference only) from a local checkpoint directory, prompted by the boxes or
//! points a dataset gives; [`label_dataset`] does that for every record of a
//! LLaVA JSON file that has a prompt and writes the masks as PNGs beside the
//! images, with a copy of the JSON whose records name them.
//!
//! The checkpoint is the original `segment_anything` layout in safetensors
//! (`image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`), as candle's SAM
//! example uses; the image encoder's size (ViT-B/L/H or smaller) is read off the
//! weights, and MobileSAM's TinyViT is recognised by its names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::segment_anything::mask_decoder::MaskDecoder;
use candle_transformers::models::segment_anything::prompt_encoder::PromptEncoder;
use candle_transformers::models::segment_anything::sam::{Sam, IMAGE_SIZE};
use image::{GrayImage, Luma, RgbImage};
use vlmkit_data::llava::{write_llava_json, LlavaDataset, LlavaRecord, MaskRef};

/// Width of SAM's prompt and image embeddings (fixed in SAM).
const PROMPT_DIM: usize = 256;
/// SAM's image embedding grid for its 1024-pixel input.
const EMBED_GRID: usize = 64;
/// The low-resolution mask SAM's decoder outputs covers the padded 1024² frame.
const LOW_RES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    #[error("SAM checkpoint {}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
    #[error("{context}: {source}")]
    Candle {
        context: String,
        #[source]
        source: candle_core::Error,
    },
    #[error(transparent)]
    Data(#[from] vlmkit_data::DataError),
    #[error("{}: {source}", path.display())]
    Image {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
}

fn candle(context: impl Into<String>) -> impl FnOnce(candle_core::Error) -> TeacherError {
    let context = context.into();
    move |source| TeacherError::Candle { context, source }
}

/// What tells SAM which region to segment, in the image's pixels.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// `[x0, y0, x1, y1]`.
    Box([f64; 4]),
    /// Points inside the region.
    Points(Vec<[f64; 2]>),
}

impl Prompt {
    /// The prompt a record gives (a box wins over points), if any.
    pub fn of(record: &LlavaRecord) -> Option<Prompt> {
        match (&record.region_box, &record.points) {
            (Some(b), _) => Some(Prompt::Box(*b)),
            (None, Some(p)) if !p.is_empty() => Some(Prompt::Points(p.clone())),
            _ => None,
        }
    }
}

/// The image encoder a checkpoint holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncoderSize {
    /// SAM's ViT: width, blocks, heads and the blocks with global attention.
    Vit {
        width: usize,
        depth: usize,
        heads: usize,
        global: Vec<usize>,
    },
    /// MobileSAM's TinyViT.
    Tiny,
}

impl EncoderSize {
    /// Reads the encoder's size off the weights' names and shapes.
    fn infer(tensors: &HashMap<String, Tensor>) -> Result<Self, String> {
        if tensors
            .keys()
            .any(|k| k.starts_with("image_encoder.layers."))
        {
            return Ok(Self::Tiny);
        }
        let dims = |name: &str| -> Result<Vec<usize>, String> {
            tensors
                .get(name)
                .map(|t| t.dims().to_vec())
                .ok_or_else(|| format!("no tensor `{name}`: not a Segment Anything checkpoint"))
        };
        let width = dims("image_encoder.patch_embed.proj.weight")?[0];
        let depth = (0..)
            .take_while(|i| {
                tensors.contains_key(&format!("image_encoder.blocks.{i}.attn.qkv.weight"))
            })
            .count();
        if depth == 0 {
            return Err("no image encoder blocks (`image_encoder.blocks.0.*`)".into());
        }
        let head_dim = dims("image_encoder.blocks.0.attn.rel_pos_h")?[1];
        if head_dim == 0 || width % head_dim != 0 {
            return Err(format!(
                "relative positions of width {head_dim} do not divide the encoder width {width}"
            ));
        }
        // Global blocks span the whole 64×64 grid: 2·64 − 1 relative positions.
        let mut global = Vec::new();
        for i in 0..depth {
            if dims(&format!("image_encoder.blocks.{i}.attn.rel_pos_h"))?[0] == 2 * EMBED_GRID - 1 {
                global.push(i);
            }
        }
        Ok(Self::Vit {
            width,
            depth,
            heads: width / head_dim,
            global,
        })
    }
}

/// Segment Anything, ready to segment prompted regions.
pub struct SamTeacher {
    /// Preprocessing and the image encoder (its own prompt encoder and decoder
    /// are private, and its box path is broken in candle 0.11).
    sam: Sam,
    // SAM's prompt encoder and mask decoder, built from the same weights: every
    // prompt goes through them.
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    size: EncoderSize,
}

impl SamTeacher {
    /// Loads the checkpoint in `dir`: `model.safetensors`, or the directory's only
    /// `.safetensors` file.
    pub fn load(dir: &Path) -> Result<Self, TeacherError> {
        let path = checkpoint_file(dir)?;
        let refuse = |message: String| TeacherError::Checkpoint {
            path: path.clone(),
            message,
        };
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| refuse(format!("not a readable safetensors file: {e}")))?;
        let size = EncoderSize::infer(&tensors).map_err(&refuse)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let sam = match &size {
            EncoderSize::Vit {
                width,
                depth,
                heads,
                global,
            } => Sam::new(*width, *depth, *heads, global, vb.clone()),
            EncoderSize::Tiny => Sam::new_tiny(vb.clone()),
        }
        .map_err(|e| refuse(format!("the weights do not fit SAM: {e}")))?;
        let prompt_encoder = PromptEncoder::new(
            PROMPT_DIM,
            (EMBED_GRID, EMBED_GRID),
            (IMAGE_SIZE, IMAGE_SIZE),
            16,
            vb.pp("prompt_encoder"),
        )
        .map_err(|e| refuse(format!("the prompt encoder's weights: {e}")))?;
        let mask_decoder = MaskDecoder::new(PROMPT_DIM, 3, 3, 256, vb.pp("mask_decoder"))
            .map_err(|e| refuse(format!("the mask decoder's weights: {e}")))?;
        Ok(Self {
            sam,
            prompt_encoder,
            mask_decoder,
            size,
        })
    }

    pub fn encoder_size(&self) -> &EncoderSize {
        &self.size
    }

    /// The region `prompt` points at in `image`, at the image's size (inside =
    /// `INSIDE`): SAM's best-scored of its three masks, logits above 0.
    pub fn segment(&self, image: &RgbImage, prompt: &Prompt) -> Result<GrayImage, TeacherError> {
        let (w0, h0) = image.dimensions();
        // SAM takes the longest side at 1024 pixels.
        let scale = IMAGE_SIZE as f64 / w0.max(h0) as f64;
        let (w, h) = (
            ((w0 as f64 * scale).round() as u32).clamp(1, IMAGE_SIZE as u32),
            ((h0 as f64 * scale).round() as u32).clamp(1, IMAGE_SIZE as u32),
        );
        let resized = image::imageops::resize(image, w, h, image::imageops::FilterType::CatmullRom);
        let pixels = Tensor::from_vec(
            resized.into_raw(),
            (h as usize, w as usize, 3),
            &Device::Cpu,
        )
        .and_then(|t| t.permute((2, 0, 1)))
        .and_then(|t| t.to_dtype(DType::F32))
        .map_err(candle("preparing the image"))?;
        let embeddings = self
            .sam
            .embeddings(&pixels)
            .map_err(candle("SAM's image encoder"))?;
        let (low_res, iou) = self
            .decode(&embeddings, prompt, scale)
            .map_err(candle("SAM's mask decoder"))?;
        let best = argmax(
            &iou.flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(candle("SAM's scores"))?,
        );
        let logits = low_res
            .i((0, best))
            .and_then(|t| t.to_vec2::<f32>())
            .map_err(candle("SAM's masks"))?;
        // Each image pixel reads the low-resolution logit under it (nearest).
        let cell = IMAGE_SIZE as f64 / LOW_RES as f64;
        let mut mask = GrayImage::new(w0, h0);
        for (x, y, pixel) in mask.enumerate_pixels_mut() {
            let lx = (((x as f64 + 0.5) * scale / cell) as usize).min(LOW_RES - 1);
            let ly = (((y as f64 + 0.5) * scale / cell) as usize).min(LOW_RES - 1);
            if logits[ly][lx] > 0.0 {
                *pixel = Luma([vlmkit_data::mask::INSIDE]);
            }
        }
        Ok(mask)
    }

    /// Masks and scores for `prompt` (image pixels, scaled by `scale` into SAM's
    /// 1024 frame). candle's prompt encoder lays a box's two corner embeddings side
    /// by side (`1×512`); they are the `1×2×256` sparse prompt the decoder takes.
    fn decode(
        &self,
        embeddings: &Tensor,
        prompt: &Prompt,
        scale: f64,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let device = embeddings.device();
        let (sparse, dense) = match prompt {
            Prompt::Points(points) => {
                let coords: Vec<f32> = points
                    .iter()
                    .flat_map(|[x, y]| [(x * scale) as f32, (y * scale) as f32])
                    .collect();
                let coords = Tensor::from_vec(coords, (1, points.len(), 2), device)?;
                // Every point is inside the region (label 1).
                let labels = Tensor::ones((1, points.len()), DType::F32, device)?;
                self.prompt_encoder
                    .forward(Some((&coords, &labels)), None, None)?
            }
            Prompt::Box(corners) => {
                let corners = corners.map(|v| (v * scale) as f32);
                let boxes = Tensor::new(&[corners], device)?;
                let (sparse, dense) = self.prompt_encoder.forward(None, Some(&boxes), None)?;
                (sparse.reshape((1, 2, PROMPT_DIM))?, dense)
            }
        };
        let image_pe = self.prompt_encoder.get_dense_pe()?;
        self.mask_decoder
            .forward(embeddings, &image_pe, &sparse, &dense, true)
    }
}

fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

fn checkpoint_file(dir: &Path) -> Result<PathBuf, TeacherError> {
    let refuse = |message: String| TeacherError::Checkpoint {
        path: dir.to_path_buf(),
        message,
    };
    let preferred = dir.join("model.safetensors");
    if preferred.is_file() {
        return Ok(preferred);
    }
    let entries =
        std::fs::read_dir(dir).map_err(|e| refuse(format!("cannot read the directory: {e}")))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(refuse(
            "no .safetensors file (convert a SAM .pth checkpoint to safetensors first)".into(),
        )),
        _ => Err(refuse(format!(
            "{} .safetensors files and no model.safetensors: name the checkpoint model.safetensors",
            found.len()
        ))),
    }
}

/// What [`label_dataset`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSummary {
    /// Records that got a mask from the teacher.
    pub labelled: usize,
    /// Records that kept the mask they had.
    pub kept: usize,
    /// Records without an image or a prompt.
    pub unprompted: usize,
}

/// Segments every record of `dataset` that has an image and a prompt, writes
/// `<image root>/<masks_dir>/<id>.png`, and writes the records (each naming its
/// new mask) to `out_json`. Records with a mask keep it unless `overwrite`.
pub fn label_dataset(
    dataset: &LlavaDataset,
    teacher: &SamTeacher,
    masks_dir: &str,
    out_json: &Path,
    overwrite: bool,
    mut progress: impl FnMut(usize, usize),
) -> Result<LabelSummary, TeacherError> {
    let mut records = dataset.records().collect::<Result<Vec<_>, _>>()?;
    let mut summary = LabelSummary::default();
    let total = records.len();
    for (index, record) in records.iter_mut().enumerate() {
        progress(index, total);
        let prompt = match (&record.image, Prompt::of(record)) {
            (Some(_), Some(prompt)) => prompt,
            _ => {
                summary.unprompted += 1;
                continue;
            }
        };
        if record.mask.is_some() && !overwrite {
            summary.kept += 1;
            continue;
        }
        // The image alone: a mask being replaced need not decode.
        let image = dataset.image(index)?.expect("the record has an image");
        let mask = teacher.segment(&image, &prompt)?;
        let relative = format!("{masks_dir}/{}.png", safe_file_name(&record.id));
        let path = dataset.image_root().join(&relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| TeacherError::Image {
                path: parent.to_path_buf(),
                source: image::ImageError::IoError(e),
            })?;
        }
        mask.save(&path)
            .map_err(|source| TeacherError::Image { path, source })?;
        record.mask = Some(MaskRef::Path(relative));
        summary.labelled += 1;
    }
    progress(total, total);
    write_llava_json(out_json, &records)?;
    Ok(summary)
}

/// A record id as a file name: path separators and other awkward characters
/// become `_`.
fn safe_file_name(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;

pub mod fixture {
    //! A small randomly initialised SAM in the checkpoint layout [`SamTeacher`]
    //! reads, for tests: the files and the pipeline are real, the masks mean
    //! nothing (real masks need real SAM weights).

    use std::path::Path;

    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};
    use candle_transformers::models::segment_anything::sam::Sam;

    /// Writes `dir/model.safetensors`: a ViT SAM of width 32, one block, one head
    /// (about 4.8 M parameters, most of them SAM's fixed-size decoder), every
    /// weight drawn from a seeded generator.
    pub fn write_random_sam(dir: &Path, seed: u64) -> candle_core::Result<()> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        Sam::new(32, 1, 1, &[], vb)?;
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            // xorshift64*, mapped to [-1, 1).
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            (bits as f32 / (1u64 << 23) as f32) - 1.0
        };
        let data = varmap.data().lock().expect("not poisoned");
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            let var = &data[name];
            let n = var.elem_count();
            // Norm scales near one, everything else small: activations stay finite.
            let norm_scale = var.rank() == 1 && name.contains("norm") && name.ends_with("weight");
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    if norm_scale {
                        1.0 + 0.1 * next()
                    } else {
                        0.2 * next()
                    }
                })
                .collect();
            var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu)?)?;
        }
        drop(data);
        std::fs::create_dir_all(dir)?;
        varmap.save(dir.join("model.safetensors"))
    }
}
