//! A vision transformer with Hugging Face `CLIPVisionModel` weight names, in two
//! families:
//! - CLIP: patch convolution (no bias), class token, learned position
//!   embeddings, `pre_layrnorm`, pre-LN blocks;
//! - SigLIP (`SiglipVisionModel`): a patch convolution with a bias, no class token,
//!   no pre-norm; the same blocks.
//!
//! Both keep a `post_layernorm` that only the pooled output uses (no connector
//! reads it, so it is reported as unused). As in transformers, the patch grid is
//! `image_size / patch_size` rounded down: the convolution ignores the pixels past
//! the last whole patch (SigLIP-so400m's 384-pixel images with 14-pixel patches).

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};
use vlmkit_core::nn::{
    AttentionConfig, FeedForward, FeedForwardConfig, LayerNorm, LinearInit, MultiHeadAttention,
};
use vlmkit_core::ops::{cast_like, Activation};
use vlmkit_core::{VisionEncoder, VisionInfo, VisualFeatures};
use vlmkit_data::processor::ImageProcessor;
use vlmkit_recipe::{Settings, SettingsError};

use crate::hf::{self, ConfigJson, HfError};
use crate::vision::{
    activation_name, HfModelType, LlavaTower, VisionArch, VisionConfig, VisionFactory,
};

/// `CLIPVisionConfig`'s fields (same names and defaults as Hugging Face).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VitConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub initializer_range: f64,
    pub initializer_factor: f64,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    /// vlmkit's addition (not a `CLIPVisionConfig` field): how freshly created
    /// position embeddings start. Loaded weights are never touched.
    pub position_embedding_init: PositionInit,
    /// CLIP or SigLIP: set by the recipe's `kind` (or the checkpoint's
    /// `model_type`), not a key of its own.
    #[serde(skip)]
    pub family: VitFamily,
}

/// Which of the two vision transformers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VitFamily {
    /// A class token and a pre-norm; the patch convolution has no bias.
    #[default]
    Clip,
    /// No class token, no pre-norm; the patch convolution has a bias.
    Siglip,
}

/// The initial value of the learned position embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionInit {
    /// CLIP's: normal with `initializer_range × initializer_factor`.
    #[default]
    Normal,
    /// MAE's fixed 2-D sine-cosine table (half the channels encode the row, half the
    /// column; the class token starts at zero): row and column are linear features
    /// from the first step instead of something the encoder has to discover.
    Sincos2d,
}

impl Default for VitConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            initializer_range: 0.02,
            initializer_factor: 1.0,
            image_mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            image_std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
            position_embedding_init: PositionInit::Normal,
            family: VitFamily::Clip,
        }
    }
}

impl VitConfig {
    /// `SiglipVisionConfig`'s defaults (and `SiglipImageProcessor`'s normalisation).
    pub fn siglip() -> Self {
        Self {
            patch_size: 16,
            hidden_act: Activation::GeluPytorchTanh,
            layer_norm_eps: 1e-6,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            family: VitFamily::Siglip,
            ..Self::default()
        }
    }

    /// Patches per side: `image_size / patch_size`, rounded down as transformers does.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Whether the encoder has a class token.
    pub fn has_cls(&self) -> bool {
        self.family == VitFamily::Clip
    }

    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Problems with the configuration, as (key, message).
    pub fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        for (key, size) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
        ] {
            if size == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err((
                "layer_norm_eps",
                format!("must be a positive number, found {}", self.layer_norm_eps),
            ));
        }
        crate::vision::check_normalisation(self.image_mean, self.image_std)?;
        if self.patch_size == 0 || self.patch_size > self.image_size {
            return Err((
                "patch_size",
                format!(
                    "patch_size {} must be between 1 and image_size {}",
                    self.patch_size, self.image_size
                ),
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err((
                "num_attention_heads",
                format!(
                    "hidden_size {} is not a multiple of num_attention_heads {}",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        if self.num_hidden_layers == 0 {
            return Err(("num_hidden_layers", "must be at least 1".into()));
        }
        if self.position_embedding_init == PositionInit::Sincos2d
            && !self.hidden_size.is_multiple_of(4)
        {
            return Err((
                "position_embedding_init",
                format!(
                    "`sincos2d` splits the width into sines and cosines of rows and columns: hidden_size {} is not a multiple of 4",
                    self.hidden_size
                ),
            ));
        }
        Ok(())
    }

    /// Parameters (names under the encoder root) whose initial value is a table
    /// rather than a draw from their `Init`; hand them to
    /// [`vlmkit_core::params::ParamStore::set_initial_values`] before building.
    pub fn initial_values(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(match self.position_embedding_init {
            PositionInit::Normal => Vec::new(),
            PositionInit::Sincos2d => {
                let table = sincos_2d_table(self.grid(), self.hidden_size)?;
                // SigLIP has no class-token row.
                let table = if self.has_cls() {
                    table
                } else {
                    table.narrow(0, 1, self.num_patches())?
                };
                vec![(
                    "vision_model.embeddings.position_embedding.weight".to_owned(),
                    table,
                )]
            }
        })
    }

    pub fn info(&self) -> VisionInfo {
        let g = self.grid();
        VisionInfo {
            depth: self.num_hidden_layers,
            widths: vec![self.hidden_size; self.num_hidden_layers + 1],
            grids: vec![(g, g); self.num_hidden_layers + 1],
            has_cls: self.has_cls(),
            image_size: self.image_size,
            image_mean: self.image_mean,
            image_std: self.image_std,
        }
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: MultiHeadAttention,
    layer_norm2: LayerNorm,
    mlp: FeedForward,
}

impl EncoderLayer {
    fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let f = cfg.initializer_factor;
        // CLIP's initialisation: projections scaled by width and depth.
        let in_proj_std =
            (d as f64).powf(-0.5) * (2.0 * cfg.num_hidden_layers as f64).powf(-0.5) * f;
        let out_proj_std = (d as f64).powf(-0.5) * f;
        let fc_std = (2.0 * d as f64).powf(-0.5) * f;
        let heads = cfg.num_attention_heads;
        // One config per init scale: q/k/v share in_proj_std, out_proj gets its own.
        let attn = MultiHeadAttention::new_with_inits(
            AttentionConfig {
                q_dim: d,
                kv_dim: d,
                out_dim: d,
                heads,
                kv_heads: heads,
                head_dim: d / heads,
                qkv_bias: true,
                out_bias: true,
                names: ["q_proj", "k_proj", "v_proj"],
                out_name: Some("out_proj"),
                init: LinearInit::Normal(in_proj_std),
            },
            LinearInit::Normal(out_proj_std),
            vb.pp("self_attn"),
        )?;
        let mlp = FeedForward::new_with_inits(
            FeedForwardConfig {
                in_dim: d,
                hidden_dim: cfg.intermediate_size,
                out_dim: d,
                act: cfg.hidden_act,
                bias: true,
                names: ("fc1", "fc2"),
                init: LinearInit::Normal(fc_std),
            },
            LinearInit::Normal(in_proj_std),
            vb.pp("mlp"),
        )?;
        Ok(Self {
            layer_norm1: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            self_attn: attn,
            layer_norm2: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
            mlp,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = (x + self
            .self_attn
            .forward_self(&self.layer_norm1.forward(x)?, None, None, None)?
            .output)?;
        &h + self.mlp.forward(&self.layer_norm2.forward(&h)?)?
    }
}

/// CLIP- or SigLIP-style vision transformer (`vision_model.*` weights).
#[derive(Debug, Clone)]
pub struct VisionTransformer {
    cfg: VitConfig,
    info: VisionInfo,
    patch_embedding: Tensor,
    /// SigLIP only.
    patch_bias: Option<Tensor>,
    /// CLIP only.
    class_embedding: Option<Tensor>,
    position_embedding: Tensor,
    /// CLIP only.
    pre_layrnorm: Option<LayerNorm>,
    layers: Vec<EncoderLayer>,
    // Kept so that the weights exist under their Hugging Face names (for loading and
    // exporting checkpoints); no connector reads the pooled output.
    _post_layernorm: LayerNorm,
}

impl VisionTransformer {
    /// Builds the encoder; `vb` is the encoder's root (weights under `vision_model.`).
    pub fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        if let Err((key, msg)) = cfg.validate() {
            candle_core::bail!("vision config `{key}`: {msg}");
        }
        let vb = vb.pp("vision_model");
        let emb = vb.pp("embeddings");
        let d = cfg.hidden_size;
        let p = cfg.patch_size;
        let f = cfg.initializer_factor;
        let patch_embedding = emb.get_with_hints(
            (d, cfg.num_channels, p, p),
            "patch_embedding.weight",
            Init::Randn {
                mean: 0.0,
                stdev: cfg.initializer_range * f,
            },
        )?;
        let clip = cfg.has_cls();
        let patch_bias = (!clip)
            .then(|| emb.get_with_hints(d, "patch_embedding.bias", Init::Const(0.0)))
            .transpose()?;
        let class_embedding = clip
            .then(|| {
                emb.get_with_hints(
                    d,
                    "class_embedding",
                    Init::Randn {
                        mean: 0.0,
                        stdev: (d as f64).powf(-0.5) * f,
                    },
                )
            })
            .transpose()?;
        let position_embedding = emb.get_with_hints(
            (cfg.num_patches() + usize::from(clip), d),
            "position_embedding.weight",
            Init::Randn {
                mean: 0.0,
                stdev: cfg.initializer_range * f,
            },
        )?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(cfg, vb.pp("encoder").pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            info: cfg.info(),
            cfg: cfg.clone(),
            patch_embedding,
            patch_bias,
            class_embedding,
            position_embedding,
            pre_layrnorm: clip
                .then(|| LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("pre_layrnorm")))
                .transpose()?,
            layers,
            _post_layernorm: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("post_layernorm"))?,
        })
    }

    pub fn config(&self) -> &VitConfig {
        &self.cfg
    }

    /// `hs[0]`: patch embeddings (after the class token, for CLIP), plus
    /// positions, pre-normed (CLIP).
    fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        let p = self.cfg.patch_size;
        let d = self.cfg.hidden_size;
        if c != self.cfg.num_channels || h != self.cfg.image_size || w != self.cfg.image_size {
            candle_core::bail!(
                "vision encoder expects pixels of shape [B, {}, {}, {}], got {:?}",
                self.cfg.num_channels,
                self.cfg.image_size,
                self.cfg.image_size,
                pixels.dims()
            );
        }
        let g = self.cfg.grid();
        // The convolution's stride leaves the pixels past the last whole patch out.
        let pixels = if g * p == h {
            pixels.clone()
        } else {
            pixels.narrow(2, 0, g * p)?.narrow(3, 0, g * p)?
        };
        let patch_tokens = vlmkit_core::nn::patch_conv(
            &pixels.permute((0, 2, 3, 1))?,
            &self.patch_embedding,
            self.patch_bias.as_ref(),
            p,
        )?
        .reshape((b, g * g, d))?;
        let x = match &self.class_embedding {
            Some(class_embedding) => {
                let cls = cast_like(class_embedding, &patch_tokens)?
                    .reshape((1, 1, d))?
                    .broadcast_as((b, 1, d))?;
                Tensor::cat(&[&cls, &patch_tokens], 1)?
            }
            None => patch_tokens,
        };
        let x = x.broadcast_add(&cast_like(&self.position_embedding, &x)?.unsqueeze(0)?)?;
        match &self.pre_layrnorm {
            Some(norm) => norm.forward(&x),
            None => Ok(x),
        }
    }
}

/// MAE's 2-D sine-cosine position table for a `grid`×`grid` patch grid plus a
/// leading zero row for the class token: `[grid² + 1, width]`.
fn sincos_2d_table(grid: usize, width: usize) -> Result<Tensor> {
    if !width.is_multiple_of(4) {
        candle_core::bail!("sincos2d position embeddings need a width divisible by 4, got {width}");
    }
    let quarter = width / 4;
    let mut table = vec![0f32; (grid * grid + 1) * width];
    for row in 0..grid {
        for col in 0..grid {
            let out = &mut table[(1 + row * grid + col) * width..][..width];
            // First half encodes the row, second half the column.
            for (half, pos) in [(0, row), (1, col)] {
                for k in 0..quarter {
                    let omega = 1.0 / 10_000f64.powf(k as f64 / quarter as f64);
                    let angle = pos as f64 * omega;
                    out[half * 2 * quarter + k] = angle.sin() as f32;
                    out[half * 2 * quarter + quarter + k] = angle.cos() as f32;
                }
            }
        }
    }
    Tensor::from_vec(table, (grid * grid + 1, width), &candle_core::Device::Cpu)
}

impl VisionEncoder for VisionTransformer {
    fn info(&self) -> &VisionInfo {
        &self.info
    }

    fn forward(&self, pixels: &Tensor, layers: &[usize]) -> Result<VisualFeatures> {
        let depth = self.cfg.num_hidden_layers;
        if let Some(&bad) = layers.iter().find(|&&l| l > depth) {
            candle_core::bail!(
                "hidden state hs[{bad}] requested from an encoder with {depth} blocks"
            );
        }
        let deepest = layers.iter().copied().max().unwrap_or(0);
        let mut states = Vec::with_capacity(deepest + 1);
        let mut x = self.embed(pixels)?;
        states.push(x.clone());
        for layer in &self.layers[..deepest] {
            x = layer.forward(&x)?;
            states.push(x.clone());
        }
        let n = self.cfg.num_patches();
        let mut patch_layers = Vec::with_capacity(layers.len());
        let mut cls = Vec::with_capacity(layers.len());
        for &l in layers {
            if self.cfg.has_cls() {
                patch_layers.push(states[l].narrow(1, 1, n)?);
                cls.push(states[l].get_on_dim(1, 0)?);
            } else {
                patch_layers.push(states[l].clone());
            }
        }
        let g = self.cfg.grid();
        Ok(VisualFeatures {
            layers: patch_layers,
            layer_ids: layers.to_vec(),
            cls: self.cfg.has_cls().then_some(cls),
            depth,
            grid: (g, g),
        })
    }

    fn unused_params(&self, layers: &[usize]) -> Vec<String> {
        let deepest = layers.iter().copied().max().unwrap_or(0);
        let mut unused: Vec<String> = (deepest..self.cfg.num_hidden_layers)
            .map(|i| format!("vision_model.encoder.layers.{i}."))
            .collect();
        unused.push("vision_model.post_layernorm.".into());
        unused
    }
}

/// The ViT factory: recipe kinds `vit` and `clip` (CLIP's layout) and `siglip`;
/// reads `CLIPVisionModel`, `CLIPModel`, `SiglipVisionModel` and `SiglipModel`
/// checkpoints.
pub struct VitFactory;

impl VisionFactory for VitFactory {
    fn kinds(&self) -> &'static [(&'static str, &'static str)] {
        &[("vit", "clip"), ("clip", "clip"), ("siglip", "siglip")]
    }

    fn summary(&self) -> &'static str {
        "vision transformer with CLIP's (class token, pre-norm) or SigLIP's layout"
    }

    fn parse_settings(
        &self,
        kind: &str,
        settings: &Settings,
    ) -> std::result::Result<VisionConfig, SettingsError> {
        let cfg = if kind == "siglip" {
            // SigLIP's defaults under the recipe's keys.
            let mut table = toml::Table::try_from(VitConfig::siglip())
                .expect("the vision config serialises as a table");
            table.extend(settings.table().clone());
            let mut cfg: VitConfig = Settings::new(settings.path(), table).parse()?;
            cfg.family = VitFamily::Siglip;
            cfg
        } else {
            settings.parse()?
        };
        cfg.validate()
            .map_err(|(key, msg)| settings.error(key, msg))?;
        Ok(VisionConfig::new(cfg))
    }

    fn hf_model_types(&self) -> &'static [HfModelType] {
        const fn ty(model_type: &'static str, nested: bool) -> HfModelType {
            HfModelType {
                model_type,
                nested,
                in_llava: !nested,
            }
        }
        const TYPES: [HfModelType; 4] = [
            ty("clip_vision_model", false),
            ty("clip", true),
            ty("siglip_vision_model", false),
            ty("siglip", true),
        ];
        &TYPES
    }

    fn read_hf_config(
        &self,
        model_type: &str,
        json: &ConfigJson,
        settings: &serde_json::Map<String, serde_json::Value>,
    ) -> std::result::Result<VisionConfig, HfError> {
        let mut cfg = if model_type.starts_with("siglip") {
            VitConfig::siglip()
        } else {
            VitConfig::default()
        };
        json.read_keys(settings, hf::vision::IGNORED, |k, v| {
            match k {
                "hidden_size" => cfg.hidden_size = json.usize(k, v)?,
                "intermediate_size" => cfg.intermediate_size = json.usize(k, v)?,
                "num_hidden_layers" => cfg.num_hidden_layers = json.usize(k, v)?,
                "num_attention_heads" => cfg.num_attention_heads = json.usize(k, v)?,
                "num_channels" => cfg.num_channels = json.usize(k, v)?,
                "image_size" => cfg.image_size = json.usize(k, v)?,
                "patch_size" => cfg.patch_size = json.usize(k, v)?,
                "hidden_act" => cfg.hidden_act = hf::vision::activation(json, k, v)?,
                "layer_norm_eps" => cfg.layer_norm_eps = json.f64(k, v)?,
                "initializer_range" => cfg.initializer_range = json.f64(k, v)?,
                "initializer_factor" => cfg.initializer_factor = json.f64(k, v)?,
                "attention_dropout" | "dropout" => json.zero(k, v)?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        cfg.validate()
            .map_err(|(key, message)| json.err(key, message))?;
        Ok(VisionConfig::new(cfg))
    }

    /// Every prefix transformers has written (`vision_model.`, none,
    /// `vision_tower.vision_model.`) to `vision_model.`; a CLIP text tower and
    /// projections, SigLIP's pooling head and a LLaVA's other parts are skipped.
    fn hf_weight_name(&self, name: &str) -> Option<String> {
        const NOT_VISION: &[&str] = &[
            "text_model.",
            "visual_projection.",
            "text_projection.",
            "logit_scale",
            "logit_bias",
            // A LLaVA model's other parts.
            "language_model.",
            "multi_modal_projector.",
        ];
        if NOT_VISION.iter().any(|p| name.starts_with(p)) {
            return None;
        }
        let name = name.strip_prefix("vision_tower.").unwrap_or(name);
        let name = if name.starts_with("vision_model.") {
            name.to_string()
        } else {
            format!("vision_model.{name}")
        };
        // SigLIP's attention-pooling head makes the pooled output, which no
        // connector reads.
        (!name.starts_with("vision_model.head.")).then_some(name)
    }
}

impl VisionArch for VitConfig {
    fn family(&self) -> &'static str {
        match self.family {
            VitFamily::Clip => "clip",
            VitFamily::Siglip => "siglip",
        }
    }

    fn info(&self) -> VisionInfo {
        VitConfig::info(self)
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn VisionEncoder>> {
        Ok(Box::new(VisionTransformer::new(self, vb)?))
    }

    fn initial_values(&self) -> Result<Vec<(String, Tensor)>> {
        VitConfig::initial_values(self)
    }

    fn set_normalisation(&mut self, mean: [f32; 3], std: [f32; 3]) {
        self.image_mean = mean;
        self.image_std = std;
    }

    /// SigLIP's exact resize; CLIP's resize of the short side and centre crop.
    fn default_processor(&self) -> ImageProcessor {
        let size = self.image_size as u32;
        match self.family {
            VitFamily::Siglip => ImageProcessor::siglip(size),
            VitFamily::Clip => ImageProcessor::clip(size, size),
        }
    }

    fn blocks_prefix(&self) -> &'static str {
        "vision_model.encoder.layers"
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "read as",
                format!(
                    "vlmkit VisionTransformer, {} layout (vision kind `{}`)",
                    if self.has_cls() { "CLIP" } else { "SigLIP" },
                    VisionArch::family(self)
                ),
            ),
            (
                "image",
                format!(
                    "{0}×{0} pixels, {1}-pixel patches: {2}×{2} grid",
                    self.image_size,
                    self.patch_size,
                    self.grid()
                ),
            ),
            (
                "class token",
                if self.has_cls() { "yes" } else { "no" }.to_string(),
            ),
            ("hidden_size", self.hidden_size.to_string()),
            ("intermediate_size", self.intermediate_size.to_string()),
            ("num_hidden_layers", self.num_hidden_layers.to_string()),
            ("num_attention_heads", self.num_attention_heads.to_string()),
            ("hidden_act", activation_name(self.hidden_act)),
            ("layer_norm_eps", self.layer_norm_eps.to_string()),
        ]
    }

    fn llava_tower(&self) -> std::result::Result<LlavaTower, String> {
        Ok(LlavaTower {
            vision_config: hf::llava::vision_config_json(self),
            patch_size: self.patch_size,
        })
    }
}
