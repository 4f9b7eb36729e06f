//! Image processors as transformers runs them (`CLIPImageProcessor`,
//! `SiglipImageProcessor`, the PIL path), plus LLaVA-1.5's pad-to-square, so a
//! pretrained encoder sees the pixel values it was trained on, to the bit.
//!
//! The steps, in transformers' order: (LLaVA) pad to a square with the mean
//! colour; resize on 8-bit pixels through Pillow's bicubic filter
//! ([`resample::resize_bicubic`](crate::resample::resize_bicubic)) — the shortest
//! edge to `S` with the long edge truncated (`int(S · long / short)`), or straight
//! to `height × width`; centre crop at `(H − h) // 2`, zero-padding first when the
//! image is smaller; rescale in f64 then f32 (`x · 1/255`); normalise in f32.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use serde_json::Value;

use crate::resample::resize_bicubic;

/// CLIP's normalisation (OpenAI's `OPENAI_CLIP_MEAN` / `_STD`).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// How an image is resized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// The shorter side to this many pixels, keeping the aspect ratio (CLIP).
    ShortestEdge(u32),
    /// Straight to `height × width` (SigLIP).
    Exact { height: u32, width: u32 },
}

/// An image processor: 8-bit RGB in, normalised channel-major floats out.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    /// LLaVA-1.5's `expand2square` with the mean colour (`int(mean · 255)`)
    /// before everything else (`image_aspect_ratio = "pad"`).
    pub pad_to_square: bool,
    pub resize: Option<Resize>,
    /// `(height, width)` of the centre crop.
    pub crop: Option<(u32, u32)>,
    /// `None` leaves pixels at 0–255.
    pub rescale_factor: Option<f64>,
    /// `None` skips normalisation.
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

/// Why a `preprocessor_config.json` cannot be followed exactly.
#[derive(Debug, thiserror::Error)]
#[error("{}: `{key}`: {message}", path.display())]
pub struct ProcessorError {
    pub path: PathBuf,
    pub key: String,
    pub message: String,
}

impl ImageProcessor {
    /// `CLIPImageProcessor`: shortest edge to `shortest_edge`, centre crop to
    /// `crop × crop`, CLIP's normalisation (openai/clip-vit-large-patch14-336:
    /// 336 and 336).
    pub fn clip(shortest_edge: u32, crop: u32) -> Self {
        Self {
            pad_to_square: false,
            resize: Some(Resize::ShortestEdge(shortest_edge)),
            crop: Some((crop, crop)),
            rescale_factor: Some(1.0 / 255.0),
            normalize: Some((CLIP_MEAN, CLIP_STD)),
        }
    }

    /// `SiglipImageProcessor`: straight to `size × size`, mean and std 0.5.
    pub fn siglip(size: u32) -> Self {
        Self {
            pad_to_square: false,
            resize: Some(Resize::Exact {
                height: size,
                width: size,
            }),
            crop: None,
            rescale_factor: Some(1.0 / 255.0),
            normalize: Some(([0.5; 3], [0.5; 3])),
        }
    }

    /// The same processor after LLaVA-1.5's pad-to-square.
    pub fn with_pad_to_square(self) -> Self {
        Self {
            pad_to_square: true,
            ..self
        }
    }

    /// The 8-bit image the encoder's pixels come from: padded, resized, cropped.
    pub fn transform(&self, image: &RgbImage) -> RgbImage {
        let mut image = if self.pad_to_square {
            let mean = self.normalize.map_or([0.0; 3], |(mean, _)| mean);
            // `tuple(int(x * 255) for x in image_mean)`, in Python floats.
            let background = mean.map(|m| (f64::from(m) * 255.0) as u8);
            expand_to_square(image, Rgb(background))
        } else {
            image.clone()
        };
        if let Some(resize) = self.resize {
            let (height, width) = resize.output_size(image.height(), image.width());
            image = resize_bicubic(&image, width, height);
        }
        if let Some((height, width)) = self.crop {
            image = center_crop(&image, height, width);
        }
        image
    }

    /// Pixel values `3 × H × W`, channel-major, with transformers' arithmetic:
    /// `(x · rescale)` in f64 rounded to f32, then `(x − mean) / std` in f32.
    pub fn pixel_values(&self, image: &RgbImage) -> (Vec<f32>, (usize, usize)) {
        let image = self.transform(image);
        let (width, height) = image.dimensions();
        let n = (width * height) as usize;
        let mut out = vec![0f32; 3 * n];
        for (i, px) in image.pixels().enumerate() {
            for c in 0..3 {
                let mut x = match self.rescale_factor {
                    Some(factor) => (f64::from(px[c]) * factor) as f32,
                    None => f32::from(px[c]),
                };
                if let Some((mean, std)) = self.normalize {
                    x = (x - mean[c]) / std[c];
                }
                out[c * n + i] = x;
            }
        }
        (out, (height as usize, width as usize))
    }

    /// The processor a Hugging Face directory's `preprocessor_config.json`
    /// describes (`CLIPImageProcessor` or `SiglipImageProcessor`); a setting it
    /// cannot follow exactly is refused by name.
    pub fn from_preprocessor_config(dir: &Path) -> Result<Self, ProcessorError> {
        let path = dir.join("preprocessor_config.json");
        let err = |key: &str, message: String| ProcessorError {
            path: path.clone(),
            key: key.to_string(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| err("", e.to_string()))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| err("", e.to_string()))?;
        let obj = value
            .as_object()
            .ok_or_else(|| err("", "not a JSON object".into()))?;
        let flag = |key: &str, default: bool| -> Result<bool, ProcessorError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| err(key, format!("expected true or false, got {v}"))),
            }
        };
        let size = |key: &str, v: &Value| -> Result<u32, ProcessorError> {
            v.as_u64()
                .filter(|&n| n > 0 && n <= u64::from(u32::MAX))
                .map(|n| n as u32)
                .ok_or_else(|| err(key, format!("expected a positive whole number, got {v}")))
        };
        let triple = |key: &str| -> Result<Option<[f32; 3]>, ProcessorError> {
            let Some(v) = obj.get(key) else {
                return Ok(None);
            };
            let numbers: Vec<f32> = v
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_f64().map(|n| n as f32))
                        .collect()
                })
                .unwrap_or_default();
            match numbers[..] {
                [a, b, c] => Ok(Some([a, b, c])),
                _ => Err(err(key, format!("expected three numbers, got {v}"))),
            }
        };
        let kind = obj
            .get("image_processor_type")
            .or_else(|| obj.get("feature_extractor_type"))
            .and_then(Value::as_str)
            .unwrap_or("CLIPImageProcessor");
        let siglip = kind.starts_with("Siglip");
        // LlavaImageProcessor is CLIP's with LLaVA-1.5's pad-to-square (`do_pad`).
        let llava = kind.starts_with("LlavaImageProcessor");
        // ConvNextImageProcessor: the short side to `size / crop_pct` and a centre
        // crop to `size` below 384 pixels, a direct resize to `size` from 384 on.
        let convnext = kind.starts_with("ConvNext");
        if !siglip && !llava && !convnext && !kind.starts_with("CLIP") {
            return Err(err(
                "image_processor_type",
                format!("`{kind}`: vlmkit follows CLIPImageProcessor, SiglipImageProcessor, LlavaImageProcessor and ConvNextImageProcessor"),
            ));
        }
        if convnext && !obj.contains_key("resample") {
            return Err(err(
                "resample",
                "absent: ConvNeXt's default is bilinear, and only bicubic (3) is implemented"
                    .into(),
            ));
        }
        let mut crop_pct = 224.0 / 256.0;
        let mut processor = if siglip {
            Self::siglip(224)
        } else {
            Self::clip(224, 224)
        };
        const IGNORED: &[&str] = &[
            "image_processor_type",
            "feature_extractor_type",
            "processor_class",
            "do_convert_rgb",
            "_processor_class",
        ];
        for (key, v) in obj {
            let k = key.as_str();
            match k {
                "do_resize" | "do_center_crop" | "do_rescale" | "do_normalize" => {}
                "crop_pct" if convnext => {
                    crop_pct = v
                        .as_f64()
                        .filter(|&p| p > 0.0)
                        .ok_or_else(|| err(k, format!("expected a positive number, got {v}")))?
                }
                "do_pad" if llava => processor.pad_to_square = flag(k, false)?,
                "resample" if v.as_u64() == Some(3) => {}
                "resample" => {
                    return Err(err(
                        k,
                        format!("{v}: only bicubic (3) resampling is implemented"),
                    ))
                }
                "size" => {
                    processor.resize = Some(match (v.get("shortest_edge"), v.as_u64()) {
                        (Some(edge), _) => Resize::ShortestEdge(size("size.shortest_edge", edge)?),
                        (None, Some(_)) if siglip => Resize::Exact {
                            height: size(k, v)?,
                            width: size(k, v)?,
                        },
                        (None, Some(_)) => Resize::ShortestEdge(size(k, v)?),
                        (None, None) => Resize::Exact {
                            height: size("size.height", v.get("height").unwrap_or(&Value::Null))?,
                            width: size("size.width", v.get("width").unwrap_or(&Value::Null))?,
                        },
                    })
                }
                "crop_size" => {
                    processor.crop = Some(match v.as_u64() {
                        Some(_) => (size(k, v)?, size(k, v)?),
                        None => (
                            size("crop_size.height", v.get("height").unwrap_or(&Value::Null))?,
                            size("crop_size.width", v.get("width").unwrap_or(&Value::Null))?,
                        ),
                    })
                }
                "rescale_factor" => {
                    processor.rescale_factor = Some(
                        v.as_f64()
                            .ok_or_else(|| err(k, format!("expected a number, got {v}")))?,
                    )
                }
                "image_mean" | "image_std" => {}
                _ if IGNORED.contains(&k) => {}
                _ => {
                    return Err(err(
                        k,
                        "unknown key: vlmkit refuses what it cannot tell is harmless".into(),
                    ))
                }
            }
        }
        let (mut mean, mut std) = processor.normalize.unwrap_or(([0.0; 3], [1.0; 3]));
        mean = triple("image_mean")?.unwrap_or(mean);
        std = triple("image_std")?.unwrap_or(std);
        processor.normalize = flag("do_normalize", true)?.then_some((mean, std));
        if convnext {
            let Some(Resize::ShortestEdge(edge)) = processor.resize else {
                return Err(err(
                    "size",
                    "ConvNextImageProcessor takes `shortest_edge`".into(),
                ));
            };
            if edge < 384 {
                // `int(shortest_edge / crop_pct)` in Python floats.
                processor.resize = Some(Resize::ShortestEdge((f64::from(edge) / crop_pct) as u32));
                processor.crop = Some((edge, edge));
            } else {
                processor.resize = Some(Resize::Exact {
                    height: edge,
                    width: edge,
                });
                processor.crop = None;
            }
        }
        if !flag("do_resize", true)? {
            processor.resize = None;
            if convnext {
                processor.crop = None;
            }
        }
        if !flag("do_center_crop", !siglip)? {
            processor.crop = None;
        }
        if !flag("do_rescale", true)? {
            processor.rescale_factor = None;
        }
        Ok(processor)
    }
}

impl ImageProcessor {
    /// The `preprocessor_config.json` transformers follows the same way:
    /// `CLIPImageProcessor`, `SiglipImageProcessor` (an exact resize without a
    /// crop), or `LlavaImageProcessor` (CLIP's after the pad to a square).
    pub fn to_preprocessor_config(&self) -> Value {
        let kind = match (self.pad_to_square, self.resize, self.crop) {
            (true, _, _) => "LlavaImageProcessor",
            (false, Some(Resize::Exact { .. }), None) => "SiglipImageProcessor",
            _ => "CLIPImageProcessor",
        };
        let (mean, std) = self.normalize.unwrap_or(([0.0; 3], [1.0; 3]));
        let mut config = serde_json::json!({
            "image_processor_type": kind,
            "processor_class": "LlavaProcessor",
            "do_convert_rgb": true,
            "do_resize": self.resize.is_some(),
            "resample": 3,
            "do_center_crop": self.crop.is_some(),
            "do_rescale": self.rescale_factor.is_some(),
            "rescale_factor": self.rescale_factor.unwrap_or(1.0 / 255.0),
            "do_normalize": self.normalize.is_some(),
            "image_mean": mean,
            "image_std": std,
        });
        if let Some(resize) = self.resize {
            config["size"] = match resize {
                Resize::ShortestEdge(edge) => serde_json::json!({ "shortest_edge": edge }),
                Resize::Exact { height, width } => {
                    serde_json::json!({ "height": height, "width": width })
                }
            };
        }
        if let Some((height, width)) = self.crop {
            config["crop_size"] = serde_json::json!({ "height": height, "width": width });
        }
        if self.pad_to_square {
            config["do_pad"] = Value::Bool(true);
        }
        config
    }

    /// The rectangle of a `height × width` input, in its pixel units, that the
    /// output covers: `[x0, y0, x1, y1]`, reaching outside the image where the
    /// output shows padding. Region masks follow the image through it.
    pub fn source_window(&self, height: u32, width: u32) -> [f64; 4] {
        let (mut h, mut w) = (height, width);
        let (mut pad_x, mut pad_y) = (0.0, 0.0);
        if self.pad_to_square && w != h {
            let side = w.max(h);
            // The offsets `expand_to_square` pastes at.
            if w > h {
                pad_y = f64::from((w - h) / 2);
            } else {
                pad_x = f64::from((h - w) / 2);
            }
            (h, w) = (side, side);
        }
        let (rh, rw) = self.resize.map_or((h, w), |r| r.output_size(h, w));
        let (scale_y, scale_x) = (f64::from(h) / f64::from(rh), f64::from(w) / f64::from(rw));
        let (top, left, ch, cw) = match self.crop {
            // `center_crop`'s offsets; negative where it pads first.
            Some((ch, cw)) => (
                (i64::from(rh) - i64::from(ch)).div_euclid(2) as f64,
                (i64::from(rw) - i64::from(cw)).div_euclid(2) as f64,
                f64::from(ch),
                f64::from(cw),
            ),
            None => (0.0, 0.0, f64::from(rh), f64::from(rw)),
        };
        [
            left * scale_x - pad_x,
            top * scale_y - pad_y,
            (left + cw) * scale_x - pad_x,
            (top + ch) * scale_y - pad_y,
        ]
    }

    /// The `(height, width)` this processor makes of any image, if it makes one
    /// size (a crop, or an exact resize).
    pub fn fixed_output(&self) -> Option<(u32, u32)> {
        match (self.crop, self.resize) {
            (Some(crop), _) => Some(crop),
            (None, Some(Resize::Exact { height, width })) => Some((height, width)),
            _ => None,
        }
    }
}

impl Resize {
    /// `(height, width)` after resizing an image of `height × width`.
    pub fn output_size(self, height: u32, width: u32) -> (u32, u32) {
        match self {
            Resize::Exact { height, width } => (height, width),
            Resize::ShortestEdge(edge) => {
                let (short, long) = if width <= height {
                    (width, height)
                } else {
                    (height, width)
                };
                // `int(S * long / short)` in Python floats: truncation.
                let new_long = (f64::from(edge) * f64::from(long) / f64::from(short)) as u32;
                if width <= height {
                    (new_long, edge)
                } else {
                    (edge, new_long)
                }
            }
        }
    }
}

/// LLaVA-1.5's `expand2square`: the image pasted at the centre of a square of
/// `background` (offsets `(long − short) // 2`).
pub fn expand_to_square(image: &RgbImage, background: Rgb<u8>) -> RgbImage {
    let (width, height) = image.dimensions();
    if width == height {
        return image.clone();
    }
    let side = width.max(height);
    let mut out = RgbImage::from_pixel(side, side, background);
    let (x0, y0) = if width > height {
        (0, (width - height) / 2)
    } else {
        ((height - width) / 2, 0)
    };
    image::imageops::replace(&mut out, image, i64::from(x0), i64::from(y0));
    out
}

/// transformers' `center_crop`: `(H − h) // 2` from the top, `(W − w) // 2`
/// from the left; an image smaller than the crop is first centred on zeros
/// (`ceil((new − old) / 2)` before it).
pub fn center_crop(image: &RgbImage, height: u32, width: u32) -> RgbImage {
    let (in_width, in_height) = image.dimensions();
    let (in_width, in_height, height, width) = (
        i64::from(in_width),
        i64::from(in_height),
        i64::from(height),
        i64::from(width),
    );
    let mut top = (in_height - height).div_euclid(2);
    let mut left = (in_width - width).div_euclid(2);
    if top >= 0 && left >= 0 && top + height <= in_height && left + width <= in_width {
        return image::imageops::crop_imm(
            image,
            left as u32,
            top as u32,
            width as u32,
            height as u32,
        )
        .to_image();
    }
    let (new_height, new_width) = (height.max(in_height), width.max(in_width));
    let top_pad = (new_height - in_height + 1) / 2;
    let left_pad = (new_width - in_width + 1) / 2;
    let mut padded = RgbImage::new(new_width as u32, new_height as u32);
    image::imageops::replace(&mut padded, image, left_pad, top_pad);
    top += top_pad;
    left += left_pad;
    let (bottom, right) = (
        (top + height).min(new_height),
        (left + width).min(new_width),
    );
    let (top, left) = (top.max(0), left.max(0));
    image::imageops::crop_imm(
        &padded,
        left as u32,
        top as u32,
        (right - left) as u32,
        (bottom - top) as u32,
    )
    .to_image()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shortest_edge_is_resized_and_the_long_one_truncated() {
        let clip = Resize::ShortestEdge(336);
        assert_eq!(clip.output_size(480, 640), (336, 448));
        assert_eq!(clip.output_size(500, 333), (504, 336)); // 336·500/333 = 504.5…
        assert_eq!(clip.output_size(336, 336), (336, 336));
    }

    #[test]
    fn pad_to_square_centres_on_the_mean_colour() {
        let image = RgbImage::from_pixel(4, 2, Rgb([255, 255, 255]));
        let square = expand_to_square(&image, Rgb([122, 116, 104]));
        assert_eq!(square.dimensions(), (4, 4));
        assert_eq!(square.get_pixel(0, 0).0, [122, 116, 104]);
        assert_eq!(square.get_pixel(0, 1).0, [255, 255, 255]);
        assert_eq!(square.get_pixel(3, 3).0, [122, 116, 104]);
        // CLIP's mean as LLaVA writes it.
        let processor = ImageProcessor::clip(336, 336).with_pad_to_square();
        let tall = RgbImage::from_pixel(2, 6, Rgb([0, 0, 0]));
        let out = processor.transform(&tall);
        assert_eq!(out.get_pixel(0, 0).0, [122, 116, 104]);
    }

    #[test]
    fn pixels_are_normalised_channel_major() {
        let mut processor = ImageProcessor::clip(2, 2);
        processor.normalize = Some(([0.5; 3], [0.5; 3]));
        let img = RgbImage::from_pixel(2, 2, Rgb([255, 0, 51]));
        let (p, size) = processor.pixel_values(&img);
        assert_eq!((p.len(), size), (12, (2, 2)));
        assert!(
            (p[0] - 1.0).abs() < 1e-6 && (p[4] + 1.0).abs() < 1e-6 && (p[8] + 0.6).abs() < 1e-6
        );
    }

    #[test]
    fn a_written_preprocessor_config_reads_back_as_the_same_processor() {
        let dir = tempfile::tempdir().unwrap();
        let mut clip = ImageProcessor::clip(48, 40);
        clip.normalize = Some(([0.5; 3], [0.25; 3]));
        for processor in [
            clip.clone(),
            clip.with_pad_to_square(),
            ImageProcessor::siglip(36),
        ] {
            let config = processor.to_preprocessor_config();
            std::fs::write(
                dir.path().join("preprocessor_config.json"),
                serde_json::to_string(&config).unwrap(),
            )
            .unwrap();
            let read = ImageProcessor::from_preprocessor_config(dir.path()).unwrap();
            assert_eq!(read, processor, "{config}");
        }
    }

    #[test]
    fn convnext_crops_by_crop_pct_below_384_and_resizes_from_there() {
        let dir = tempfile::tempdir().unwrap();
        let read = |body: &str| {
            std::fs::write(dir.path().join("preprocessor_config.json"), body).unwrap();
            ImageProcessor::from_preprocessor_config(dir.path())
        };
        let small = read(r#"{"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 40}, "crop_pct": 0.875, "resample": 3}"#).unwrap();
        // int(40 / 0.875) = 45, then the centre 40×40.
        assert_eq!(small.resize, Some(Resize::ShortestEdge(45)));
        assert_eq!(small.crop, Some((40, 40)));
        let large = read(
            r#"{"image_processor_type": "ConvNextImageProcessor", "size": 400, "resample": 3}"#,
        )
        .unwrap();
        assert_eq!(
            large.resize,
            Some(Resize::Exact {
                height: 400,
                width: 400
            })
        );
        assert_eq!(large.crop, None);
        let bilinear = read(r#"{"image_processor_type": "ConvNextImageProcessor", "size": 224}"#)
            .unwrap_err()
            .to_string();
        assert!(
            bilinear.contains("`resample`") && bilinear.contains("bilinear"),
            "{bilinear}"
        );
    }

    #[test]
    fn the_source_window_is_what_the_output_shows() {
        // 64 wide, 32 tall: padded to 64×64 (16 rows above), resized to 32, no
        // crop left to do.
        let padded = ImageProcessor::clip(32, 32).with_pad_to_square();
        assert_eq!(padded.source_window(32, 64), [0.0, -16.0, 64.0, 48.0]);
        // Without the pad: the short side to 32 (64×32 stays), the centre 32
        // columns kept.
        let cropped = ImageProcessor::clip(32, 32);
        assert_eq!(cropped.source_window(32, 64), [16.0, 0.0, 48.0, 32.0]);
        // Halved first: the window is in the input's units.
        assert_eq!(cropped.source_window(64, 128), [32.0, 0.0, 96.0, 64.0]);
        assert_eq!(
            ImageProcessor::siglip(16).source_window(40, 24),
            [0.0, 0.0, 24.0, 40.0]
        );
        // Each window holds exactly the pixels `transform` keeps.
        let mut image = RgbImage::new(64, 32);
        image.put_pixel(20, 5, Rgb([255, 255, 255]));
        let out = cropped.transform(&image);
        assert_eq!(out.get_pixel(20 - 16, 5).0, [255, 255, 255]);
    }

    #[test]
    fn a_crop_larger_than_the_image_pads_with_zeros() {
        let image = RgbImage::from_pixel(3, 2, Rgb([9, 9, 9]));
        let out = center_crop(&image, 4, 5);
        assert_eq!(out.dimensions(), (5, 4));
        // ceil((4 − 2) / 2) = 1 row and ceil((5 − 3) / 2) = 1 column before it.
        assert_eq!(out.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(out.get_pixel(1, 1).0, [9, 9, 9]);
        assert_eq!(out.get_pixel(3, 2).0, [9, 9, 9]);
        assert_eq!(out.get_pixel(4, 3).0, [0, 0, 0]);
    }
}
