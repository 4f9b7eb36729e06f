//! ConvNeXt with Hugging Face `ConvNextModel` structure and weight names: a
//! patchify stem (`embeddings.patch_embeddings`, k = s = `patch_size`) and its
//! LayerNorm, then stages of blocks — 7×7 depthwise conv, LayerNorm, Linear
//! C→4C, GELU, Linear 4C→C, layer scale, residual — with a LayerNorm + 2×2
//! stride-2 conv in front of every stage but the first, and a final LayerNorm
//! that only the pooled output uses (no connector reads it: reported unused).
//!
//! The hidden states are HF's `output_hidden_states`: `hs[0]` the stem's output,
//! `hs[i]` the output of stage `i`; they differ in width and grid from stage to
//! stage, which connectors that need equal-shaped layers refuse up front.
//!
//! Everything runs channels-last (`B×H×W×C`), so every LayerNorm — HF's
//! "channels_first" ones included — is vlmkit's last-axis LayerNorm with a sound
//! backward; the stride-k convolutions are linear maps of unfolded patches, and
//! the depthwise convolution is vlmkit's fused op (`ops::depthwise_conv2d`).

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};
use vlmkit_core::nn::{self, LayerNorm, Linear, LinearInit};
use vlmkit_core::ops::{self, Activation};
use vlmkit_core::{VisionEncoder, VisionInfo, VisualFeatures};
use vlmkit_data::processor::ImageProcessor;
use vlmkit_recipe::{Settings, SettingsError};

use crate::hf::{self, ConfigJson, HfError};
use crate::vision::{activation_name, HfModelType, VisionArch, VisionConfig, VisionFactory};

/// `ConvNextConfig`'s fields (same names and defaults as Hugging Face), plus the
/// input normalisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConvNextConfig {
    pub num_channels: usize,
    pub patch_size: usize,
    pub num_stages: usize,
    pub hidden_sizes: Vec<usize>,
    pub depths: Vec<usize>,
    pub hidden_act: Activation,
    pub initializer_range: f64,
    /// Eps of the final (pooler) LayerNorm only; the others use 1e-6 as in HF.
    pub layer_norm_eps: f64,
    pub layer_scale_init_value: f64,
    /// Stochastic depth is not implemented: must be 0.
    pub drop_path_rate: f64,
    pub image_size: usize,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
}

impl Default for ConvNextConfig {
    /// ConvNeXt-T (`facebook/convnext-tiny-224`), ImageNet normalisation.
    fn default() -> Self {
        Self {
            num_channels: 3,
            patch_size: 4,
            num_stages: 4,
            hidden_sizes: vec![96, 192, 384, 768],
            depths: vec![3, 3, 9, 3],
            hidden_act: Activation::Gelu,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            layer_scale_init_value: 1e-6,
            drop_path_rate: 0.0,
            image_size: 224,
            image_mean: [0.485, 0.456, 0.406],
            image_std: [0.229, 0.224, 0.225],
        }
    }
}

/// Eps of every LayerNorm but the final one (hard-coded in HF's ConvNeXt).
const BLOCK_NORM_EPS: f64 = 1e-6;
/// Side of the depthwise kernel.
const KERNEL: usize = 7;

impl ConvNextConfig {
    /// The grid of the stem's output.
    pub fn stem_grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Checks the sizes fit together; `(key, message)` on the first that does not.
    pub fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        crate::vision::check_normalisation(self.image_mean, self.image_std)?;
        if self.num_stages == 0 {
            return Err(("num_stages", "at least one stage".into()));
        }
        for (key, list) in [
            ("hidden_sizes", &self.hidden_sizes),
            ("depths", &self.depths),
        ] {
            if list.len() != self.num_stages {
                return Err((
                    key,
                    format!(
                        "{} entries for {} stages (`num_stages`)",
                        list.len(),
                        self.num_stages
                    ),
                ));
            }
        }
        if self.hidden_sizes.contains(&0) {
            return Err(("hidden_sizes", "every stage needs a positive width".into()));
        }
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err((
                "patch_size",
                format!(
                    "must divide image_size {} (got {})",
                    self.image_size, self.patch_size
                ),
            ));
        }
        // Each stage after the first halves the grid.
        let halvings = self.num_stages - 1;
        if !self.stem_grid().is_multiple_of(1 << halvings) {
            return Err((
                "image_size",
                format!(
                    "{}/{} = {} cannot be halved {halvings} times (one per stage after the first)",
                    self.image_size,
                    self.patch_size,
                    self.stem_grid()
                ),
            ));
        }
        if self.drop_path_rate != 0.0 {
            return Err((
                "drop_path_rate",
                "stochastic depth is not implemented; use 0".into(),
            ));
        }
        Ok(())
    }

    /// Hidden states: the stem's output, then each stage's.
    pub fn info(&self) -> VisionInfo {
        let mut widths = vec![self.hidden_sizes[0]];
        let mut grids = vec![(self.stem_grid(), self.stem_grid())];
        for (i, &w) in self.hidden_sizes.iter().enumerate() {
            let g = self.stem_grid() >> i;
            widths.push(w);
            grids.push((g, g));
        }
        VisionInfo {
            depth: self.num_stages,
            widths,
            grids,
            has_cls: false,
            image_size: self.image_size,
            image_mean: self.image_mean,
            image_std: self.image_std,
        }
    }
}

/// A `KERNEL`×`KERNEL` depthwise convolution with zero padding on channels-last
/// `x`: `weight` is the conv's `[C, 1, k, k]`, `bias` `[C]`.
fn depthwise_conv(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let y = ops::depthwise_conv2d(x, weight)?;
    y.broadcast_add(&ops::cast_like(bias, &y)?)
}

/// One ConvNeXt block (`encoder.stages.{i}.layers.{j}`).
struct Block {
    dwconv_weight: Tensor,
    dwconv_bias: Tensor,
    layernorm: LayerNorm,
    pwconv1: Linear,
    pwconv2: Linear,
    layer_scale: Tensor,
    act: Activation,
}

impl Block {
    fn new(cfg: &ConvNextConfig, width: usize, vb: VarBuilder) -> Result<Self> {
        let normal = Init::Randn {
            mean: 0.0,
            stdev: cfg.initializer_range,
        };
        Ok(Self {
            dwconv_weight: vb.get_with_hints(
                (width, 1, KERNEL, KERNEL),
                "dwconv.weight",
                normal,
            )?,
            dwconv_bias: vb.get_with_hints(width, "dwconv.bias", Init::Const(0.0))?,
            layernorm: LayerNorm::new(width, BLOCK_NORM_EPS, vb.pp("layernorm"))?,
            pwconv1: Linear::new(
                width,
                4 * width,
                true,
                LinearInit::Normal(cfg.initializer_range),
                vb.pp("pwconv1"),
            )?,
            pwconv2: Linear::new(
                4 * width,
                width,
                true,
                LinearInit::Normal(cfg.initializer_range),
                vb.pp("pwconv2"),
            )?,
            layer_scale: vb.get_with_hints(
                width,
                "layer_scale_parameter",
                Init::Const(cfg.layer_scale_init_value),
            )?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = depthwise_conv(x, &self.dwconv_weight, &self.dwconv_bias)?;
        let y = self.layernorm.forward(&y)?;
        let y = self
            .pwconv2
            .forward(&self.act.forward(&self.pwconv1.forward(&y)?)?)?;
        x + y.broadcast_mul(&ops::cast_like(&self.layer_scale, &y)?)?
    }
}

/// A stage: optional downsampling, then its blocks.
struct Stage {
    downsample: Option<(LayerNorm, Tensor, Tensor)>,
    blocks: Vec<Block>,
}

impl Stage {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = match &self.downsample {
            Some((norm, weight, bias)) => nn::patch_conv(&norm.forward(x)?, weight, Some(bias), 2)?,
            None => x.clone(),
        };
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        Ok(x)
    }
}

/// The ConvNeXt encoder. `vb` is the model's root (HF `ConvNextModel`: weights
/// under `embeddings.`, `encoder.stages.`, `layernorm.`).
pub struct ConvNext {
    cfg: ConvNextConfig,
    info: VisionInfo,
    stem_weight: Tensor,
    stem_bias: Tensor,
    stem_norm: LayerNorm,
    stages: Vec<Stage>,
    _final_norm: LayerNorm,
}

impl ConvNext {
    pub fn new(cfg: &ConvNextConfig, vb: VarBuilder) -> Result<Self> {
        if let Err((key, msg)) = cfg.validate() {
            candle_core::bail!("vision config `{key}`: {msg}");
        }
        let normal = Init::Randn {
            mean: 0.0,
            stdev: cfg.initializer_range,
        };
        let emb = vb.pp("embeddings");
        let (c0, p) = (cfg.hidden_sizes[0], cfg.patch_size);
        let stem_weight = emb.get_with_hints(
            (c0, cfg.num_channels, p, p),
            "patch_embeddings.weight",
            normal,
        )?;
        let stem_bias = emb.get_with_hints(c0, "patch_embeddings.bias", Init::Const(0.0))?;
        let stem_norm = LayerNorm::new(c0, BLOCK_NORM_EPS, emb.pp("layernorm"))?;
        let stages_vb = vb.pp("encoder").pp("stages");
        let mut stages = Vec::with_capacity(cfg.num_stages);
        for (i, (&width, &depth)) in cfg.hidden_sizes.iter().zip(&cfg.depths).enumerate() {
            let svb = stages_vb.pp(i);
            let downsample = if i == 0 {
                None
            } else {
                let dvb = svb.pp("downsampling_layer");
                let prev = cfg.hidden_sizes[i - 1];
                Some((
                    LayerNorm::new(prev, BLOCK_NORM_EPS, dvb.pp("0"))?,
                    dvb.get_with_hints((width, prev, 2, 2), "1.weight", normal)?,
                    dvb.get_with_hints(width, "1.bias", Init::Const(0.0))?,
                ))
            };
            let blocks = (0..depth)
                .map(|j| Block::new(cfg, width, svb.pp("layers").pp(j)))
                .collect::<Result<Vec<_>>>()?;
            stages.push(Stage { downsample, blocks });
        }
        let last = *cfg
            .hidden_sizes
            .last()
            .expect("validated: at least one stage");
        Ok(Self {
            info: cfg.info(),
            cfg: cfg.clone(),
            stem_weight,
            stem_bias,
            stem_norm,
            stages,
            _final_norm: LayerNorm::new(last, cfg.layer_norm_eps, vb.pp("layernorm"))?,
        })
    }

    pub fn config(&self) -> &ConvNextConfig {
        &self.cfg
    }

    /// `hs[0]`: the patchify stem and its LayerNorm, channels-last.
    fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let (_b, c, h, w) = pixels.dims4()?;
        let size = self.cfg.image_size;
        if c != self.cfg.num_channels || h != size || w != size {
            candle_core::bail!(
                "vision encoder expects pixels of shape [B, {}, {size}, {size}], got {:?}",
                self.cfg.num_channels,
                pixels.dims()
            );
        }
        let x = pixels.permute((0, 2, 3, 1))?;
        let x = nn::patch_conv(
            &x,
            &self.stem_weight,
            Some(&self.stem_bias),
            self.cfg.patch_size,
        )?;
        self.stem_norm.forward(&x)
    }
}

impl VisionEncoder for ConvNext {
    fn info(&self) -> &VisionInfo {
        &self.info
    }

    fn forward(&self, pixels: &Tensor, layers: &[usize]) -> Result<VisualFeatures> {
        let depth = self.cfg.num_stages;
        if let Some(&bad) = layers.iter().find(|&&l| l > depth) {
            candle_core::bail!(
                "hidden state hs[{bad}] requested from an encoder with {depth} stages"
            );
        }
        let deepest = layers.iter().copied().max().unwrap_or(0);
        let mut states = Vec::with_capacity(deepest + 1);
        let mut x = self.embed(pixels)?;
        states.push(x.clone());
        for stage in &self.stages[..deepest] {
            x = stage.forward(&x)?;
            states.push(x.clone());
        }
        let tokens = layers
            .iter()
            .map(|&l| {
                let (b, h, w, c) = states[l].dims4()?;
                states[l].reshape((b, h * w, c))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(VisualFeatures {
            layers: tokens,
            layer_ids: layers.to_vec(),
            cls: None,
            depth,
            // The grids differ by stage; this is the first selected layer's.
            grid: layers.first().map_or((0, 0), |&l| self.info.grids[l]),
        })
    }

    fn unused_params(&self, layers: &[usize]) -> Vec<String> {
        let deepest = layers.iter().copied().max().unwrap_or(0);
        let mut unused: Vec<String> = (deepest..self.cfg.num_stages)
            .map(|i| format!("encoder.stages.{i}."))
            .collect();
        unused.push("layernorm.".into());
        unused
    }
}

/// The ConvNeXt factory: recipe kind `convnext`; reads `ConvNextModel` and
/// `ConvNextForImageClassification` checkpoints.
pub struct ConvNextFactory;

impl VisionFactory for ConvNextFactory {
    fn kinds(&self) -> &'static [(&'static str, &'static str)] {
        &[("convnext", "convnext")]
    }

    fn summary(&self) -> &'static str {
        "ConvNeXt: its stages are the hidden states (they differ in width and grid)"
    }

    fn parse_settings(
        &self,
        _kind: &str,
        settings: &Settings,
    ) -> std::result::Result<VisionConfig, SettingsError> {
        let cfg: ConvNextConfig = settings.parse()?;
        cfg.validate()
            .map_err(|(key, msg)| settings.error(key, msg))?;
        Ok(VisionConfig::new(cfg))
    }

    fn hf_model_types(&self) -> &'static [HfModelType] {
        &[HfModelType {
            model_type: "convnext",
            nested: false,
            in_llava: false,
        }]
    }

    fn read_hf_config(
        &self,
        _model_type: &str,
        json: &ConfigJson,
        settings: &serde_json::Map<String, serde_json::Value>,
    ) -> std::result::Result<VisionConfig, HfError> {
        let mut cfg = ConvNextConfig::default();
        let list = |k: &str, v: &serde_json::Value| -> std::result::Result<Vec<usize>, HfError> {
            v.as_array()
                .ok_or_else(|| json.err(k, format!("expected a list of whole numbers, got {v}")))?
                .iter()
                .map(|n| json.usize(k, n))
                .collect()
        };
        json.read_keys(settings, hf::vision::IGNORED, |k, v| {
            match k {
                "num_channels" => cfg.num_channels = json.usize(k, v)?,
                "patch_size" => cfg.patch_size = json.usize(k, v)?,
                "num_stages" => cfg.num_stages = json.usize(k, v)?,
                "hidden_sizes" => cfg.hidden_sizes = list(k, v)?,
                "depths" => cfg.depths = list(k, v)?,
                "hidden_act" => cfg.hidden_act = hf::vision::activation(json, k, v)?,
                "initializer_range" => cfg.initializer_range = json.f64(k, v)?,
                "layer_norm_eps" => cfg.layer_norm_eps = json.f64(k, v)?,
                "layer_scale_init_value" => cfg.layer_scale_init_value = json.f64(k, v)?,
                "drop_path_rate" => cfg.drop_path_rate = json.f64(k, v)?,
                "image_size" => cfg.image_size = json.usize(k, v)?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        cfg.validate()
            .map_err(|(key, message)| json.err(key, message))?;
        Ok(VisionConfig::new(cfg))
    }

    /// The classifier's `convnext.` prefix dropped; its head skipped.
    fn hf_weight_name(&self, name: &str) -> Option<String> {
        if name.starts_with("classifier.") {
            return None;
        }
        Some(name.strip_prefix("convnext.").unwrap_or(name).to_string())
    }
}

impl VisionArch for ConvNextConfig {
    fn family(&self) -> &'static str {
        "convnext"
    }

    fn info(&self) -> VisionInfo {
        ConvNextConfig::info(self)
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn VisionEncoder>> {
        Ok(Box::new(ConvNext::new(self, vb)?))
    }

    fn set_normalisation(&mut self, mean: [f32; 3], std: [f32; 3]) {
        self.image_mean = mean;
        self.image_std = std;
    }

    /// CLIP's resize and centre crop: transformers' ConvNeXt processor
    /// (`crop_pct`) applies only to a checkpoint that brings its own
    /// `preprocessor_config.json`.
    fn default_processor(&self) -> ImageProcessor {
        let size = self.image_size as u32;
        ImageProcessor::clip(size, size)
    }

    /// Stage `N`'s blocks and the downsampling in front of it.
    fn blocks_prefix(&self) -> &'static str {
        "encoder.stages"
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        let list = |v: &[usize]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        vec![
            (
                "read as",
                "vlmkit ConvNext (vision kind `convnext`)".to_string(),
            ),
            (
                "image",
                format!(
                    "{0}×{0} pixels, stem patch {1}",
                    self.image_size, self.patch_size
                ),
            ),
            ("hidden_sizes", list(&self.hidden_sizes)),
            ("depths", list(&self.depths)),
            ("hidden_act", activation_name(self.hidden_act)),
        ]
    }

    /// `B×C×H×W`, as transformers' `channels_first` hidden states.
    fn hf_hidden_state(
        &self,
        layer: &Tensor,
        _cls: Option<&Tensor>,
        (h, w): (usize, usize),
    ) -> Result<Tensor> {
        let (b, _, c) = layer.dims3()?;
        layer
            .reshape((b, h, w, c))?
            .permute((0, 3, 1, 2))?
            .contiguous()
    }
}

#[cfg(test)]
mod tests;
