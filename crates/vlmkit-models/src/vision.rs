//! Vision encoders behind one small trait each, so that adding an encoder is
//! one file and one registration.
//!
//! A [`VisionFactory`] is keyed by the recipe `kind`s it builds. It parses a
//! recipe's `[vision]` settings, or a Hugging Face checkpoint's `config.json`,
//! into a [`VisionArch`]: the encoder's typed configuration, which then knows
//! everything the rest of vlmkit asks of an encoder — its hidden states
//! ([`VisionInfo`]), how to build it, its default image processor, where its
//! blocks' weights live (for `vision.blocks.N` patterns), what `vlmkit model`
//! says about it and whether transformers' LLaVA can hold it. A
//! [`VisionRegistry`] holds the factories a process knows.

use std::any::Any;
use std::sync::Arc;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;
use vlmkit_core::{VisionEncoder, VisionInfo};
use vlmkit_data::processor::ImageProcessor;
use vlmkit_recipe::{Settings, SettingsError};

use crate::hf::{ConfigJson, HfError};

/// A Hugging Face `model_type` a factory reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HfModelType {
    pub model_type: &'static str,
    /// The vision settings sit under `vision_config` (a full CLIP or SigLIP
    /// model), not at the top of `config.json`.
    pub nested: bool,
    /// The type can be a LLaVA model's `vision_config`.
    pub in_llava: bool,
}

/// Builds one family of vision encoders.
pub trait VisionFactory: Send + Sync {
    /// The recipe `kind`s it builds, each with the family its checkpoints read
    /// as (`("vit", "clip")`: a `vit` recipe reads a CLIP checkpoint).
    fn kinds(&self) -> &'static [(&'static str, &'static str)];

    /// One line on what it is.
    fn summary(&self) -> &'static str;

    /// The architecture a recipe's `[vision]` settings describe for `kind`
    /// (without `kind`, `from` and `layers`; unknown keys refused).
    fn parse_settings(
        &self,
        kind: &str,
        settings: &Settings,
    ) -> std::result::Result<VisionConfig, SettingsError>;

    /// The Hugging Face `model_type`s it reads.
    fn hf_model_types(&self) -> &'static [HfModelType] {
        &[]
    }

    /// The architecture a checkpoint's vision settings (`config.json`, or its
    /// `vision_config`) describe; `model_type` is one of
    /// [`hf_model_types`](Self::hf_model_types).
    fn read_hf_config(
        &self,
        model_type: &str,
        json: &ConfigJson,
        settings: &serde_json::Map<String, Value>,
    ) -> std::result::Result<VisionConfig, HfError> {
        let _ = settings;
        Err(json.err(
            "model_type",
            format!("vlmkit reads no `{model_type}` checkpoint as this encoder"),
        ))
    }

    /// vlmkit's name (under the encoder) of a checkpoint weight, `None` for a
    /// weight that is not part of the encoder (a text tower, a classifier).
    fn hf_weight_name(&self, name: &str) -> Option<String> {
        Some(name.to_string())
    }
}

impl std::fmt::Debug for dyn VisionFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<&str> = self.kinds().iter().map(|(k, _)| *k).collect();
        write!(f, "VisionFactory({})", kinds.join(", "))
    }
}

/// What transformers' `LlavaForConditionalGeneration` needs of a tower.
#[derive(Debug, Clone, PartialEq)]
pub struct LlavaTower {
    /// `config.json`'s `vision_config`.
    pub vision_config: Value,
    /// The patch size `LlavaProcessor` counts image tokens with.
    pub patch_size: usize,
}

/// A vision encoder's configuration, typed by its factory; everything vlmkit
/// asks of an encoder before or without its weights.
pub trait VisionArch: ArchObject + Send + Sync + std::fmt::Debug {
    /// The family checkpoints of it read as (`clip`, `siglip`, `convnext`).
    fn family(&self) -> &'static str;

    /// Its hidden states, as a connector sees them before any tensor exists.
    fn info(&self) -> VisionInfo;

    /// Builds the encoder; its weights live under `vb`.
    fn build(&self, vb: VarBuilder) -> Result<Box<dyn VisionEncoder>>;

    /// Parameters (names under the encoder) that start from a table instead of
    /// a random draw.
    fn initial_values(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }

    /// Takes the normalisation a checkpoint's `preprocessor_config.json` gives.
    fn set_normalisation(&mut self, mean: [f32; 3], std: [f32; 3]);

    /// The image processor of a checkpoint without `preprocessor_config.json`,
    /// and of a freshly made encoder (normalisation aside).
    fn default_processor(&self) -> ImageProcessor;

    /// The name (under the encoder) of its blocks, for `vision.blocks.N` in
    /// `trainable` patterns: block `N` is `{blocks_prefix}.N`.
    fn blocks_prefix(&self) -> &'static str;

    /// What `vlmkit model inspect` says of it, as (label, value) rows.
    fn describe(&self) -> Vec<(&'static str, String)>;

    /// Hidden state `layer` laid out as transformers' `output_hidden_states`
    /// (the class token first where there is one).
    fn hf_hidden_state(
        &self,
        layer: &Tensor,
        cls: Option<&Tensor>,
        grid: (usize, usize),
    ) -> Result<Tensor> {
        let _ = grid;
        match cls {
            Some(cls) => Tensor::cat(&[&cls.unsqueeze(1)?, layer], 1),
            None => Ok(layer.clone()),
        }
    }

    /// The tower as transformers' LLaVA holds it, or why it cannot.
    fn llava_tower(&self) -> std::result::Result<LlavaTower, String> {
        Err(format!(
            "the llava-hf format holds a CLIP or SigLIP tower; this run's vision encoder is a `{}`, whose hidden states LlavaForConditionalGeneration cannot select patches from",
            self.family()
        ))
    }
}

/// What every architecture is as a value: cloned, compared, printed as the
/// recipe's settings, downcast. Implemented for every `Clone + PartialEq +
/// Serialize` architecture.
pub trait ArchObject: Any {
    fn clone_box(&self) -> Box<dyn VisionArch>;
    fn eq_dyn(&self, other: &(dyn VisionArch + '_)) -> bool;
    /// Its settings as the recipe spells them: what settings written beside a
    /// `from` must agree with.
    fn settings_table(&self) -> toml::Table;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: VisionArch + Clone + PartialEq + serde::Serialize + 'static> ArchObject for T {
    fn clone_box(&self) -> Box<dyn VisionArch> {
        Box::new(self.clone())
    }

    fn eq_dyn(&self, other: &(dyn VisionArch + '_)) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }

    fn settings_table(&self) -> toml::Table {
        toml::Table::try_from(self).expect("vision configs serialise as tables")
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl dyn VisionArch {
    /// The concrete configuration, when it is a `T`.
    pub fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        self.as_any().downcast_ref()
    }

    pub fn downcast_mut<T: 'static>(&mut self) -> Option<&mut T> {
        self.as_any_mut().downcast_mut()
    }
}

/// An encoder's configuration as its factory typed it, behind [`VisionArch`]:
/// cloned, compared and printed like any config, and downcast to the concrete
/// type where one is needed (`config.downcast_ref::<VitConfig>()`).
#[derive(Debug)]
pub struct VisionConfig(Box<dyn VisionArch>);

impl VisionConfig {
    pub fn new(arch: impl VisionArch + 'static) -> Self {
        Self(Box::new(arch))
    }
}

impl Clone for VisionConfig {
    fn clone(&self) -> Self {
        Self(self.0.clone_box())
    }
}

impl PartialEq for VisionConfig {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_dyn(other.0.as_ref())
    }
}

impl std::ops::Deref for VisionConfig {
    type Target = dyn VisionArch;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}

impl std::ops::DerefMut for VisionConfig {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_mut()
    }
}

/// Two factories claim the same recipe kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("vision encoder kind `{0}` is registered twice")]
pub struct DuplicateVisionKind(pub String);

/// The vision encoders a process knows, by recipe kind, in the order they were
/// registered.
#[derive(Clone, Default)]
pub struct VisionRegistry {
    factories: Vec<(&'static str, Arc<dyn VisionFactory>)>,
}

impl std::fmt::Debug for VisionRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds()).finish()
    }
}

impl VisionRegistry {
    /// The encoders vlmkit ships: ViT (CLIP and SigLIP layouts) and ConvNeXt.
    pub fn builtin() -> Self {
        let mut registry = Self::default();
        registry
            .register(Arc::new(crate::vit::VitFactory))
            .and_then(|()| registry.register(Arc::new(crate::convnext::ConvNextFactory)))
            .expect("the built-in vision encoders have distinct kinds");
        registry
    }

    /// Adds a factory under each of its kinds; a kind already taken is refused
    /// and nothing is added.
    pub fn register(
        &mut self,
        factory: Arc<dyn VisionFactory>,
    ) -> std::result::Result<(), DuplicateVisionKind> {
        if let Some((kind, _)) = factory
            .kinds()
            .iter()
            .find(|(kind, _)| self.get(kind).is_some())
        {
            return Err(DuplicateVisionKind(kind.to_string()));
        }
        for (kind, _) in factory.kinds() {
            self.factories.push((kind, factory.clone()));
        }
        Ok(())
    }

    /// The factory of recipe kind `kind`.
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn VisionFactory>> {
        self.factories
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, factory)| factory)
    }

    /// Every recipe kind, in registration order.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.factories.iter().map(|(kind, _)| *kind)
    }

    /// The family checkpoints of recipe kind `kind` read as.
    pub fn family(&self, kind: &str) -> Option<&'static str> {
        self.get(kind)?
            .kinds()
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, family)| *family)
    }

    /// The factory reading Hugging Face `model_type` (inside a LLaVA model when
    /// `in_llava`), and how.
    pub fn for_model_type(
        &self,
        model_type: &str,
        in_llava: bool,
    ) -> Option<(&Arc<dyn VisionFactory>, HfModelType)> {
        self.factories.iter().find_map(|(_, factory)| {
            factory
                .hf_model_types()
                .iter()
                .find(|t| t.model_type == model_type && (t.in_llava || !in_llava))
                .map(|t| (factory, *t))
        })
    }

    /// Every Hugging Face `model_type` some factory reads, each once.
    pub fn model_types(&self) -> Vec<&'static str> {
        let mut types: Vec<&'static str> = Vec::new();
        for (_, factory) in &self.factories {
            for t in factory.hf_model_types() {
                if !types.contains(&t.model_type) {
                    types.push(t.model_type);
                }
            }
        }
        types
    }
}

/// An activation as `config.json` spells it (`gelu_pytorch_tanh`).
pub fn activation_name(act: vlmkit_core::ops::Activation) -> String {
    serde_json::to_value(act)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| format!("{act:?}"))
}

/// A per-channel normalisation pixels can be divided by: finite means, finite
/// positive standard deviations.
pub fn check_normalisation(
    mean: [f32; 3],
    std: [f32; 3],
) -> std::result::Result<(), (&'static str, String)> {
    if !mean.iter().all(|m| m.is_finite()) {
        return Err((
            "image_mean",
            format!("must be finite numbers, found {mean:?}"),
        ));
    }
    if !std.iter().all(|s| s.is_finite() && *s > 0.0) {
        return Err((
            "image_std",
            format!("must be positive numbers (pixels are divided by them), found {std:?}"),
        ));
    }
    Ok(())
}
