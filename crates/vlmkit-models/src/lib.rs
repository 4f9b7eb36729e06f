//! Vision encoders and language models, with Hugging Face weight names and config
//! fields, built from their recipe sections.

pub mod convnext;
pub mod gguf;
pub mod hf;
pub mod llama;
pub mod vision;
pub mod vit;

use std::path::PathBuf;
use std::sync::Arc;

use vlmkit_core::{LanguageModel, LlmInfo, VisionEncoder, VisionInfo};
use vlmkit_recipe::{Recipe, Settings, SettingsError};

pub use convnext::{ConvNext, ConvNextConfig, ConvNextFactory};
pub use llama::{Llama, LlamaConfig};
pub use vision::{VisionArch, VisionConfig, VisionFactory, VisionRegistry};
pub use vit::{PositionInit, VisionTransformer, VitConfig, VitFactory, VitFamily};

/// Where a model's weights come from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Fresh initialisation from the recipe seed.
    Scratch,
    /// A local Hugging Face directory (`config.json`, safetensors, tokenizer),
    /// resolved relative to the recipe that named it.
    Local(PathBuf),
}

impl Source {
    /// The Hugging Face directory, if the weights come from one.
    pub fn local_dir(&self) -> Option<&std::path::Path> {
        match self {
            Self::Scratch => None,
            Self::Local(dir) => Some(dir),
        }
    }
}

/// `from = "scratch"` (the default) or a directory, relative to the recipe file.
fn parse_source(settings: &Settings, recipe: &Recipe) -> Result<Source, SettingsError> {
    match settings.get_str("from")? {
        None | Some("scratch") => Ok(Source::Scratch),
        Some("") => Err(settings.error(
            "from",
            "empty: use \"scratch\" or a local Hugging Face directory",
        )),
        Some(raw) => Ok(Source::Local(
            recipe
                .path_value(&settings.key("from"))
                .unwrap_or_else(|| PathBuf::from(raw)),
        )),
    }
}

/// The `[vision]` section: which encoder, where its weights come from, which hidden
/// states a connector receives, and the encoder's configuration.
#[derive(Debug, Clone)]
pub struct VisionSpec {
    pub kind: String,
    /// The factory of `kind`: how its checkpoints' weights are named.
    pub factory: Arc<dyn VisionFactory>,
    pub source: Source,
    /// Hidden states handed to the connector (HF indices, negative from the end);
    /// `None` lets the connector choose.
    pub layers: Option<Vec<i64>>,
    /// The encoder's configuration, typed by its factory.
    pub config: VisionConfig,
    /// Settings (`vision.key`) inherited from a base recipe that gave way to the
    /// checkpoint `from` names.
    pub given_way: Vec<String>,
}

impl PartialEq for VisionSpec {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.source == other.source
            && self.layers == other.layers
            && self.config == other.config
            && self.given_way == other.given_way
    }
}

impl VisionSpec {
    /// Parses `settings` (the `[vision]` table of `recipe`) with the encoders
    /// `registry` knows.
    pub fn from_settings(
        settings: &Settings,
        recipe: &Recipe,
        registry: &VisionRegistry,
    ) -> Result<Self, SettingsError> {
        let kind = settings
            .get_str("kind")?
            .ok_or_else(|| settings.error("kind", "missing: which vision encoder (e.g. \"vit\")"))?
            .to_string();
        let factory = registry.get(&kind).cloned().ok_or_else(|| {
            settings.error(
                "kind",
                format!(
                    "unknown vision encoder `{kind}` (known: {})",
                    registry.kinds().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        let source = parse_source(settings, recipe)?;
        let layers = match settings.get("layers") {
            None => None,
            Some(v) => Some(v.clone().try_into::<Vec<i64>>().map_err(|_| {
                settings.error(
                    "layers",
                    "expected a list of integers, e.g. [-2] or [1, 2, 3]",
                )
            })?),
        };
        if layers.as_ref().is_some_and(|l| l.is_empty()) {
            return Err(settings.error("layers", "select at least one hidden state"));
        }
        let (config, given_way) = match &source {
            Source::Local(dir) if dir.join("config.json").is_file() => (
                pretrained_vision_config(settings, recipe, &kind, dir, registry)?,
                inherited_keys(settings, recipe, &VISION_NOT_ARCHITECTURE),
            ),
            _ => (
                factory.parse_settings(&kind, &settings.without(&["kind", "from", "layers"]))?,
                Vec::new(),
            ),
        };
        let spec = Self {
            kind,
            factory,
            source,
            layers,
            config,
            given_way,
        };
        if let Some(layers) = &spec.layers {
            let info = spec.info();
            for &l in layers {
                info.resolve(l)
                    .map_err(|e| settings.error("layers", e.to_string()))?;
            }
        }
        Ok(spec)
    }

    pub fn info(&self) -> VisionInfo {
        self.config.info()
    }

    /// Parameters (names under the encoder root) that start from a table instead
    /// of a random draw.
    pub fn initial_values(&self) -> candle_core::Result<Vec<(String, candle_core::Tensor)>> {
        self.config.initial_values()
    }

    /// Builds the encoder (weights under the given builder's prefix).
    pub fn build(&self, vb: candle_nn::VarBuilder) -> candle_core::Result<Box<dyn VisionEncoder>> {
        self.config.build(vb)
    }
}

/// The architecture of the checkpoint a `[vision]` section names with `from`.
/// Settings written beside `from` (in the same file, or with `--set`) must agree
/// with the checkpoint; those inherited from a base recipe give way to it, so a
/// recipe can extend a from-scratch one and name a checkpoint.
fn pretrained_vision_config(
    settings: &Settings,
    recipe: &Recipe,
    kind: &str,
    dir: &std::path::Path,
    registry: &VisionRegistry,
) -> Result<VisionConfig, SettingsError> {
    let checkpoint = hf::vision::read_vision_config_with(dir, registry)
        .map_err(|e| settings.error("from", e.to_string()))?;
    if registry.family(kind) != Some(checkpoint.kind) {
        return Err(settings.error(
            "kind",
            format!(
                "`{kind}`, but {} holds a {} encoder (`model_type` `{}`): set kind = \"{}\"",
                dir.display(),
                checkpoint.kind,
                checkpoint.model_type,
                checkpoint.kind
            ),
        ));
    }
    agree_with_checkpoint(
        settings,
        recipe,
        &checkpoint.config.settings_table(),
        &VISION_NOT_ARCHITECTURE,
        &format!("a {} encoder", checkpoint.kind),
        dir,
    )?;
    Ok(checkpoint.config)
}

/// Settings written beside `from` (in the same file, or with `--set`) must agree
/// with the checkpoint's `theirs`; those inherited from a base recipe give way to
/// it. `skip` lists keys that are not architecture.
fn agree_with_checkpoint(
    settings: &Settings,
    recipe: &Recipe,
    theirs: &toml::Table,
    skip: &[&str],
    what: &str,
    dir: &std::path::Path,
) -> Result<(), SettingsError> {
    for key in settings.table().keys() {
        if skip.contains(&key.as_str()) || !beside_from(settings, recipe, key) {
            continue;
        }
        let written = &settings.table()[key];
        let Some(held) = theirs.get(key) else {
            return Err(settings.error(
                key,
                format!(
                    "unknown key for {what} (known: {})",
                    theirs.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        if !same_setting(written, held) {
            return Err(settings.error(
                key,
                format!(
                    "{written} here, but the checkpoint in {} has {held}; leave the key out to take the checkpoint's",
                    dir.display()
                ),
            ));
        }
    }
    Ok(())
}

/// `[vision]` keys that are not the encoder's architecture (or only about a fresh
/// initialisation).
const VISION_NOT_ARCHITECTURE: [&str; 4] = ["kind", "from", "layers", "position_embedding_init"];

/// `[llm]` keys that are not the decoder's architecture.
const LLM_NOT_ARCHITECTURE: [&str; 5] = [
    "kind",
    "from",
    "tokenizer",
    "chat_template",
    "system_prompt",
];

/// The keys of a section with a checkpoint that were inherited rather than
/// written beside `from`, and so gave way to the checkpoint (full dotted names).
/// `keep` lists the keys that stay the recipe's either way.
fn inherited_keys(settings: &Settings, recipe: &Recipe, keep: &[&str]) -> Vec<String> {
    settings
        .table()
        .keys()
        .filter(|k| !keep.contains(&k.as_str()) && !beside_from(settings, recipe, k))
        .map(|k| settings.key(k))
        .collect()
}

/// Whether `key` was written beside `from`: in the file that sets `from`, or with
/// `--set` (rather than inherited from a base recipe).
fn beside_from(settings: &Settings, recipe: &Recipe, key: &str) -> bool {
    let from_file = recipe
        .locate(&settings.key("from"))
        .and_then(vlmkit_recipe::Origin::file);
    match recipe.locate(&settings.key(key)) {
        Some(vlmkit_recipe::Origin::Override(_)) => true,
        Some(origin) => origin.file() == from_file,
        None => false,
    }
}

/// Whether a value written in a recipe means the checkpoint's: numbers compare as
/// the f32 the models hold them in (image means and stds are f32).
fn same_setting(written: &toml::Value, held: &toml::Value) -> bool {
    use toml::Value;
    let number = |v: &Value| match v {
        Value::Integer(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    };
    match (written, held) {
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_setting(x, y))
        }
        (Value::Integer(a), Value::Integer(b)) => a == b,
        _ => match (number(written), number(held)) {
            (Some(a), Some(b)) => a as f32 == b as f32,
            _ => written == held,
        },
    }
}

/// The `[llm]` section: which decoder, its tokenizer and chat template, and its
/// configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmSpec {
    pub kind: String,
    pub source: Source,
    pub tokenizer: TokenizerSource,
    /// Chat template name (see `vlmkit-data`'s templates).
    pub chat_template: String,
    /// Replaces the template's default system prompt (`""` for none).
    pub system_prompt: Option<String>,
    pub config: LlamaConfig,
    /// Whether the recipe set `vocab_size` itself (else the tokenizer decides).
    pub vocab_size_set: bool,
    /// Whether the architecture came from the checkpoint `from` names (which then
    /// fixes the vocabulary).
    pub pretrained: bool,
    /// Settings (`llm.key`) inherited from a base recipe that gave way to the
    /// checkpoint (the tokenizer included).
    pub given_way: Vec<String>,
}

/// Where the language model's tokenizer comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerSource {
    /// Word level over the vocabulary of the recipe's data (`tokenizer = "builtin"`,
    /// the default for a model trained from scratch).
    Builtin,
    /// A Hugging Face `tokenizer.json` (by default the one in the `from`
    /// directory), or a GGUF file whose metadata describes one (by default the
    /// GGUF file `from` names).
    File(PathBuf),
}

/// Language model kinds this build knows.
pub const LLM_KINDS: &[&str] = &["llama"];

impl LlmSpec {
    /// Parses `settings` (the `[llm]` table of `recipe`).
    pub fn from_settings(settings: &Settings, recipe: &Recipe) -> Result<Self, SettingsError> {
        let kind = settings
            .get_str("kind")?
            .ok_or_else(|| {
                settings.error("kind", "missing: which language model (e.g. \"llama\")")
            })?
            .to_string();
        if !LLM_KINDS.contains(&kind.as_str()) {
            return Err(settings.error(
                "kind",
                format!(
                    "unknown language model `{kind}` (known: {})",
                    LLM_KINDS.join(", ")
                ),
            ));
        }
        let source = parse_source(settings, recipe)?;
        // A tokenizer inherited from a from-scratch base recipe gives way to the
        // checkpoint's, like its other inherited settings.
        let written = match (settings.get_str("tokenizer")?, &source) {
            (Some(_), Source::Local(_)) if !beside_from(settings, recipe, "tokenizer") => None,
            (written, _) => written,
        };
        let tokenizer = match (written, &source) {
            (Some("builtin"), _) | (None, Source::Scratch) => TokenizerSource::Builtin,
            (Some(raw), _) => TokenizerSource::File(
                recipe
                    .path_value(&settings.key("tokenizer"))
                    .unwrap_or_else(|| PathBuf::from(raw)),
            ),
            // A model file is GGUF, its tokenizer inside it (a corrupt one is
            // refused as GGUF, not searched as a directory).
            (None, Source::Local(path)) if gguf::is_model_file(path) => {
                TokenizerSource::File(path.clone())
            }
            (None, Source::Local(dir)) => TokenizerSource::File(dir.join("tokenizer.json")),
        };
        let chat_template = settings
            .get_str("chat_template")?
            .unwrap_or("vicuna_v1")
            .to_string();
        let system_prompt = settings.get_str("system_prompt")?.map(str::to_string);
        let checkpoint = match &source {
            Source::Local(path) if gguf::is_gguf(path) || path.join("config.json").is_file() => {
                Some(
                    hf::read_language_config(path)
                        .map_err(|e| settings.error("from", e.to_string()))?,
                )
            }
            _ => None,
        };
        let pretrained = checkpoint.is_some();
        let given_way = match &source {
            Source::Local(_) => {
                let keep: Vec<&str> = LLM_NOT_ARCHITECTURE
                    .iter()
                    .copied()
                    .filter(|k| *k != "tokenizer")
                    .collect();
                inherited_keys(settings, recipe, &keep)
            }
            Source::Scratch => Vec::new(),
        };
        let config = match checkpoint {
            Some(checkpoint) => {
                let theirs = toml::Table::try_from(&checkpoint.config)
                    .expect("the language model config serialises as a table");
                agree_with_checkpoint(
                    settings,
                    recipe,
                    &theirs,
                    &LLM_NOT_ARCHITECTURE,
                    &format!("a `{}` language model", checkpoint.model_type),
                    &checkpoint.path,
                )?;
                checkpoint.config
            }
            None => {
                let config: LlamaConfig = settings.without(&LLM_NOT_ARCHITECTURE).parse()?;
                config
                    .validate()
                    .map_err(|(key, msg)| settings.error(key, msg))?;
                config
            }
        };
        Ok(Self {
            kind,
            source,
            tokenizer,
            chat_template,
            system_prompt,
            vocab_size_set: settings.get("vocab_size").is_some() || pretrained,
            pretrained,
            given_way,
            config,
        })
    }

    /// Fits the vocabulary to a tokenizer of `vocab` entries: taken as is unless the
    /// recipe set `vocab_size`, which must then be large enough.
    ///
    /// A pretrained model's vocabulary is the checkpoint's. `image` is the
    /// tokenizer's `<image>` placeholder: when the tokenizer had none and appended
    /// it after its vocabulary, the model never embeds or predicts it (the
    /// placeholder's position takes the visual tokens), so it needs no row.
    pub fn fit_vocab(
        &mut self,
        vocab: usize,
        image: u32,
        settings: &Settings,
    ) -> Result<(), SettingsError> {
        if self.pretrained {
            let appended = image as usize + 1 == vocab && image as usize >= self.config.vocab_size;
            let needed = vocab - usize::from(appended);
            if self.config.vocab_size < needed {
                return Err(settings.error(
                    "tokenizer",
                    format!(
                        "the tokenizer has {needed} tokens, but the checkpoint's embedding has only {} rows",
                        self.config.vocab_size
                    ),
                ));
            }
            return Ok(());
        }
        if self.vocab_size_set {
            if self.config.vocab_size < vocab {
                return Err(settings.error(
                    "vocab_size",
                    format!(
                        "{} is smaller than the tokenizer's vocabulary of {vocab}",
                        self.config.vocab_size
                    ),
                ));
            }
        } else {
            self.config.vocab_size = vocab;
        }
        Ok(())
    }

    pub fn info(&self) -> LlmInfo {
        self.config.info()
    }

    /// The name (under the language model) of its decoder blocks, for
    /// `llm.blocks.N` in `trainable` patterns.
    pub fn blocks_prefix(&self) -> &'static str {
        "model.layers"
    }

    pub fn build(&self, vb: candle_nn::VarBuilder) -> candle_core::Result<Box<dyn LanguageModel>> {
        Ok(Box::new(Llama::new(&self.config, vb)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pretrained(vocab: usize) -> LlmSpec {
        LlmSpec {
            kind: "llama".into(),
            source: Source::Local("model.gguf".into()),
            tokenizer: TokenizerSource::File("model.gguf".into()),
            chat_template: "chatml".into(),
            system_prompt: None,
            config: LlamaConfig {
                vocab_size: vocab,
                ..LlamaConfig::default()
            },
            vocab_size_set: true,
            pretrained: true,
            given_way: Vec::new(),
        }
    }

    #[test]
    fn a_pretrained_vocabulary_needs_no_row_for_an_appended_image_token() {
        let settings = Settings::new("llm", toml::Table::new());
        // `<image>` appended after 100 tokens: 101 ids, 100 rows suffice.
        let mut spec = pretrained(100);
        spec.fit_vocab(101, 100, &settings).unwrap();
        assert_eq!(spec.config.vocab_size, 100);
        // Padded embeddings (Qwen2, llava-hf) are fine.
        pretrained(128).fit_vocab(101, 100, &settings).unwrap();
        // `<image>` inside the vocabulary needs its row.
        pretrained(100).fit_vocab(101, 7, &settings).unwrap_err();
        // A tokenizer larger than the embedding is refused, naming both sizes.
        let err = pretrained(100).fit_vocab(150, 149, &settings).unwrap_err();
        assert!(
            err.to_string().contains("149 tokens") && err.to_string().contains("only 100 rows"),
            "{err}"
        );
    }
}
