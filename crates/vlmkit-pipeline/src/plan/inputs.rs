//! The inputs part of a plan: the data each stage and the evaluation read, the
//! tokenizer (fitted to the language model's vocabulary), the chat templates and
//! the image processors.

use std::sync::Arc;

use vlmkit_data::processor::ImageProcessor;
use vlmkit_data::{ChatTemplate, TextTokenizer};
use vlmkit_models::{LlmSpec, TokenizerSource, VisionSpec};
use vlmkit_recipe::{Recipe, RecipeError};

use super::model::ModelPlan;
use super::Purpose;
use crate::data::{eval_spec, train_spec, DataSpec};

/// What a model reads, validated.
#[derive(Clone)]
pub struct InputPlan {
    /// Each stage's training data.
    pub train: Vec<DataSpec>,
    /// The evaluation data.
    pub eval: DataSpec,
    /// Always present in plans made to run; an inspected plan may lack it.
    pub tokenizer: Option<Arc<TextTokenizer>>,
    /// `llm.chat_template`: what evaluation and inference prompt with.
    pub template: ChatTemplate,
    /// Each stage's template (its own `chat_template`, else `template`).
    pub stage_templates: Vec<ChatTemplate>,
    /// Each stage's image processor (its `image_aspect_ratio`).
    pub stage_processors: Vec<ImageProcessor>,
}

impl InputPlan {
    /// Parses the data sections, fixes the tokenizer (`tokenizer` is the one a
    /// checkpoint saved; `None` builds the recipe's) and fits `model`'s
    /// vocabulary to it, and makes each stage's template and processor.
    pub(super) fn new(
        recipe: &Recipe,
        model: &mut ModelPlan,
        tokenizer: Option<TextTokenizer>,
        purpose: Purpose,
    ) -> Result<Self, RecipeError> {
        let train = (0..recipe.stages.len())
            .map(|i| train_spec(recipe, i))
            .collect::<Result<Vec<_>, _>>()?;
        let eval = eval_spec(recipe)?;
        let llm = &mut model.llm;
        let tokenizer = match tokenizer {
            Some(t) => Some(t),
            None => build_tokenizer(recipe, llm, purpose, &train, &eval)?,
        };
        if let Some(tokenizer) = &tokenizer {
            llm.fit_vocab(
                tokenizer.vocab_size(),
                tokenizer.image,
                &recipe.section("llm"),
            )
            .map_err(|e| recipe.error_for(e))?;
        }
        let template = ChatTemplate::from_name(&llm.chat_template, llm.system_prompt.as_deref())
            .map_err(|e| recipe.error_at("llm.chat_template", e.to_string()))?;
        let stage_templates = recipe
            .stages
            .iter()
            .enumerate()
            .map(|(i, stage)| match &stage.chat_template {
                None => Ok(template.clone()),
                Some(name) => {
                    ChatTemplate::from_name(name, llm.system_prompt.as_deref()).map_err(|e| {
                        recipe.error_at(&format!("stage.{i}.chat_template"), e.to_string())
                    })
                }
            })
            .collect::<Result<Vec<_>, _>>()?;

        let base = base_processor(recipe, &model.vision)?;
        let stage_processors = recipe
            .stages
            .iter()
            .enumerate()
            .map(|(i, stage)| match stage.image_aspect_ratio.as_deref() {
                None | Some("square") => Ok(base.clone()),
                Some("pad") => Ok(base.clone().with_pad_to_square()),
                Some(other) => Err(recipe.error_at(
                    &format!("stage.{i}.image_aspect_ratio"),
                    format!("`{other}` is not a way to fit images: \"square\" (the image processor as it is) or \"pad\" (onto a square of the mean colour first)"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            train,
            eval,
            tokenizer: tokenizer.map(Arc::new),
            template,
            stage_templates,
            stage_processors,
        })
    }

    /// What evaluation, inference and export preprocess images with: the last
    /// stage's processor (a recipe has at least one stage).
    pub fn processor(&self) -> &ImageProcessor {
        self.stage_processors
            .last()
            .expect("a recipe has at least one stage")
    }
}

/// The image processor the encoder's pixels come from, before a stage's
/// `image_aspect_ratio`: the `from` directory's `preprocessor_config.json` when
/// it has one, else the encoder's own ([`vlmkit_models::VisionArch::default_processor`]),
/// always at the encoder's size and with its normalisation.
fn base_processor(recipe: &Recipe, vision: &VisionSpec) -> Result<ImageProcessor, RecipeError> {
    let info = vision.info();
    let size = info.image_size as u32;
    let config = vision
        .source
        .local_dir()
        .filter(|dir| dir.join("preprocessor_config.json").is_file());
    let mut processor = match config {
        Some(dir) => ImageProcessor::from_preprocessor_config(dir)
            .map_err(|e| recipe.error_at("vision.from", e.to_string()))?,
        None => vision.config.default_processor(),
    };
    // Padding is a stage's choice (`image_aspect_ratio`).
    processor.pad_to_square = false;
    processor.normalize = Some((info.image_mean, info.image_std));
    match processor.fixed_output() {
        Some(out) if out == (size, size) => Ok(processor),
        made => Err(recipe.error_at(
            "vision.from",
            format!(
                "its preprocessor_config.json makes {}, but the encoder takes {size}×{size}",
                made.map_or("images of no fixed size".to_string(), |(h, w)| format!(
                    "{h}×{w} images"
                ))
            ),
        )),
    }
}

/// The tokenizer the recipe names: word level over the data's vocabulary, or a
/// `tokenizer.json`. An inspected plan does without an absent file when the recipe
/// sets `llm.vocab_size`.
fn build_tokenizer(
    recipe: &Recipe,
    llm: &LlmSpec,
    purpose: Purpose,
    train: &[DataSpec],
    eval: &DataSpec,
) -> Result<Option<TextTokenizer>, RecipeError> {
    let path = match &llm.tokenizer {
        TokenizerSource::Builtin => {
            return builtin_tokenizer(recipe, train.iter().chain([eval])).map(Some)
        }
        TokenizerSource::File(path) => path,
    };
    if purpose == Purpose::Inspect && !path.exists() {
        return if llm.vocab_size_set {
            Ok(None)
        } else {
            Err(recipe.error_at(
                "llm.tokenizer",
                format!(
                    "`{}` does not exist, so the vocabulary size is unknown: set `llm.vocab_size` to inspect the recipe without the tokenizer",
                    path.display()
                ),
            ))
        };
    }
    // The model file `from` names is GGUF, its tokenizer inside it (a corrupt
    // one is refused as GGUF, at `from`); a tokenizer named apart is read by
    // its contents.
    let models_own = matches!(&llm.source, vlmkit_models::Source::Local(from) if from == path);
    let key = if models_own || recipe.value("llm.tokenizer").is_none() {
        "llm.from"
    } else {
        "llm.tokenizer"
    };
    if models_own || vlmkit_models::gguf::is_gguf(path) {
        let json = vlmkit_models::gguf::GgufFile::open(path)
            .and_then(|file| file.tokenizer_json())
            .map_err(|e| recipe.error_at(key, e.to_string()))?;
        return TextTokenizer::from_json(&json)
            .map(Some)
            .map_err(|e| recipe.error_at(key, format!("{}: {e}", path.display())));
    }
    TextTokenizer::from_file(path)
        .map(Some)
        .map_err(|e| recipe.error_at(key, e.to_string()))
}

/// Word level over the vocabulary of every data source the recipe reads.
fn builtin_tokenizer<'a>(
    recipe: &Recipe,
    specs: impl Iterator<Item = &'a DataSpec>,
) -> Result<TextTokenizer, RecipeError> {
    let mut words = Vec::new();
    for spec in specs {
        let vocab = spec
            .vocabulary()
            .map_err(|e| recipe.error_at("data", e.to_string()))?;
        for w in vocab {
            if !words.contains(&w) {
                words.push(w);
            }
        }
    }
    TextTokenizer::builtin(&words).map_err(|e| recipe.error_at("llm.tokenizer", e.to_string()))
}
