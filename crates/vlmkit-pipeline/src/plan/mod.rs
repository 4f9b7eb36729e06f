//! From a recipe to a validated plan — every component parsed by its factory,
//! the connector's needs checked against the encoder, the tokenizer fixed —
//! before any tensor exists. Every problem comes back as a [`RecipeError`]
//! naming the file, line and key.
//!
//! A plan has three parts, one per concern:
//! - [`ModelPlan`]: the vision encoder, the connector and the language model,
//!   and their agreement;
//! - [`InputPlan`]: the data, the tokenizer, the chat templates and the image
//!   processors;
//! - [`StagePlan`]: what each stage trains, on which losses, at which rates,
//!   and which pretrained parts stay frozen.

mod inputs;
mod model;
mod stages;

use std::path::PathBuf;
use std::sync::Arc;

pub use inputs::InputPlan;
pub use model::{ModelPlan, ParamShapes};
pub use stages::{ParamPatterns, StagePlan};

use candle_core::Device;
use vlmkit_core::params::ParamStore;
use vlmkit_data::{Collator, TextTokenizer};
use vlmkit_models::{Source, TokenizerSource};
use vlmkit_recipe::{Recipe, RecipeError};

use crate::batch::BatchBuilder;
use crate::data::DataSpec;
use crate::{Components, PipelineError};

/// What a plan is made for, which decides whether the files a recipe names must
/// exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Training, evaluation, inference: weights and tokenizer must be readable.
    Run,
    /// `vlmkit params` and `vlmkit recipe check`: shapes only, so weight
    /// directories and tokenizer files need not exist on this machine.
    Inspect,
}

/// Everything a run needs to know, validated.
#[derive(Clone)]
pub struct Plan {
    pub recipe: Recipe,
    pub model: ModelPlan,
    pub inputs: InputPlan,
    pub stages: StagePlan,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("connector", &self.model.connector.kind())
            .field("layers", &self.model.env.layers)
            .finish()
    }
}

impl Plan {
    /// Validates `recipe` with the components `components` knows (the recipe's own
    /// `[plugins]` added). `tokenizer` is the one a checkpoint saved (evaluation
    /// and resume must use exactly that one); `None` builds it from the recipe.
    pub fn new(
        recipe: Recipe,
        components: &Components,
        tokenizer: Option<TextTokenizer>,
    ) -> Result<Self, RecipeError> {
        Self::make(recipe, components, tokenizer, Purpose::Run)
    }

    /// Validates `recipe` for inspection (shapes, counts, settings): pretrained
    /// weight directories and the tokenizer file need not exist; without the
    /// tokenizer, `llm.vocab_size` must be set.
    pub fn inspect(recipe: Recipe, components: &Components) -> Result<Self, RecipeError> {
        Self::make(recipe, components, None, Purpose::Inspect)
    }

    fn make(
        recipe: Recipe,
        components: &Components,
        tokenizer: Option<TextTokenizer>,
        purpose: Purpose,
    ) -> Result<Self, RecipeError> {
        // The recipe's own plugins come first: its connector may be one of them.
        let components = &components.with_recipe_plugins(&recipe)?;
        let mut model = ModelPlan::new(&recipe, components, purpose)?;
        let inputs = InputPlan::new(&recipe, &mut model, tokenizer, purpose)?;
        let stages = StagePlan::new(&recipe, &model)?;
        Ok(Self {
            recipe,
            model,
            inputs,
            stages,
        })
    }

    /// The tokenizer; only an inspected plan whose tokenizer file is absent lacks it.
    pub fn tokenizer(&self) -> Result<&Arc<TextTokenizer>, RecipeError> {
        self.inputs.tokenizer.as_ref().ok_or_else(|| {
            let path = match &self.model.llm.tokenizer {
                TokenizerSource::File(path) => path.display().to_string(),
                TokenizerSource::Builtin => "builtin".into(),
            };
            self.recipe.error_at(
                "llm.tokenizer",
                format!("the tokenizer `{path}` was not read (the recipe was only inspected)"),
            )
        })
    }

    /// Stage `stage`'s training data.
    pub fn train_data(&self, stage: usize) -> &DataSpec {
        &self.inputs.train[stage]
    }

    /// The evaluation data.
    pub fn eval_data(&self) -> &DataSpec {
        &self.inputs.eval
    }

    /// The parameters a fresh run starts from (see
    /// [`ModelPlan::create_fresh_params`]), drawn from the recipe seed.
    pub fn create_fresh_params(&self, store: &ParamStore) -> Result<Vec<String>, PipelineError> {
        self.model.create_fresh_params(store, self.recipe.run.seed)
    }

    /// The pretrained parts that no stage up to `stage` (the stage in progress)
    /// trains: their weights are still exactly their source's, so a checkpoint
    /// leaves them out (as LLaVA's stage 1 saves only the projector) and they are
    /// read back from the source.
    pub fn frozen_pretrained_parts(&self, stage: usize) -> Vec<&'static str> {
        self.model
            .pretrained_parts()
            .into_iter()
            .map(|(part, _)| part)
            .filter(|part| !self.stages.trains_part(&self.recipe.stages, stage, part))
            .collect()
    }

    /// The token grid region masks are compared on, when a stage names a loss
    /// that reads them: the grid of the first selected layer, which the
    /// connector's grounding map covers.
    pub fn grounding_grid(&self) -> Option<(usize, usize)> {
        self.model.needs.grounding_map.as_ref()?;
        let read = self.recipe.stages.iter().any(|s| {
            s.losses.keys().any(|name| {
                self.model
                    .losses
                    .get(name)
                    .is_some_and(|loss| loss.reads_region_masks())
            })
        });
        let env = &self.model.env;
        read.then(|| env.vision.grids[env.layers[0]])
    }

    /// Turns examples into batches for this model on `device`, as evaluation
    /// and inference prompt (the recipe's template, the last stage's processor).
    pub fn batch_builder(&self, device: Device) -> Result<BatchBuilder, RecipeError> {
        Ok(BatchBuilder {
            collator: self.collator(self.model.visual_tokens)?,
            vision: self.model.env.vision.clone(),
            device,
            grounding_grid: self.grounding_grid(),
            processor: self.inputs.processor().clone(),
        })
    }

    /// As [`Plan::batch_builder`], with stage `stage`'s template and processor.
    pub fn stage_batch_builder(
        &self,
        stage: usize,
        device: Device,
    ) -> Result<BatchBuilder, RecipeError> {
        let mut builder = self.batch_builder(device)?;
        builder.collator.template = self.inputs.stage_templates[stage].clone();
        builder.processor = self.inputs.stage_processors[stage].clone();
        Ok(builder)
    }

    /// Tokenises conversations for this model, leaving room for `visual_tokens`.
    pub fn collator(&self, visual_tokens: usize) -> Result<Collator, RecipeError> {
        Ok(Collator {
            tokenizer: self.tokenizer()?.clone(),
            template: self.inputs.template.clone(),
            max_text_len: self.model.text_budget(visual_tokens),
        })
    }

    /// The keys whose values are paths to files outside the recipe (set or not).
    fn path_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for (key, source) in [
            ("vision.from", &self.model.vision.source),
            ("llm.from", &self.model.llm.source),
        ] {
            if let Source::Local(_) = source {
                keys.push(key.to_string());
            }
        }
        if let TokenizerSource::File(_) = &self.model.llm.tokenizer {
            keys.push("llm.tokenizer".to_string());
        }
        keys.extend((0..self.recipe.plugins.paths.len()).map(|i| format!("plugins.paths.{i}")));
        keys.extend(
            model::connector_weight_dirs(&self.recipe, &self.model.needs)
                .into_iter()
                .map(|(k, _)| k),
        );
        let data_tables = ["data.train".to_string(), "data.eval".to_string()]
            .into_iter()
            .chain((0..self.recipe.stages.len()).map(|i| format!("stage.{i}.data")));
        for table in data_tables {
            keys.extend(["json", "images"].map(|k| format!("{table}.{k}")));
        }
        for i in 0..self.recipe.eval.benchmarks.len() {
            keys.extend(
                ["questions", "images", "annotations"].map(|k| format!("eval.benchmarks.{i}.{k}")),
            );
        }
        keys
    }

    /// The resolved recipe as a run directory keeps it: paths to outside files
    /// made absolute, so evaluating or resuming the run from anywhere reads the
    /// same data and weights.
    pub fn run_recipe_toml(&self) -> String {
        let keys = self.path_keys();
        self.recipe.to_toml_string_anchored(
            keys.iter().map(String::as_str),
            self.model
                .vision
                .given_way
                .iter()
                .chain(&self.model.llm.given_way)
                .map(String::as_str),
        )
    }

    /// Files and directories the recipe names outside itself, each with the key or
    /// part of the recipe that names it: pretrained weights, the tokenizer, LLaVA
    /// data.
    pub fn external_paths(&self) -> Vec<(String, PathBuf)> {
        let mut paths = Vec::new();
        for (key, source) in [
            ("vision.from", &self.model.vision.source),
            ("llm.from", &self.model.llm.source),
        ] {
            if let Source::Local(dir) = source {
                paths.push((key.to_string(), dir.clone()));
            }
        }
        if let TokenizerSource::File(path) = &self.model.llm.tokenizer {
            paths.push(("llm.tokenizer".to_string(), path.clone()));
        }
        paths.extend(model::connector_weight_dirs(
            &self.recipe,
            &self.model.needs,
        ));
        let data = self
            .recipe
            .stages
            .iter()
            .zip(&self.inputs.train)
            .map(|(stage, spec)| (format!("stage `{}` data", stage.name), spec))
            .chain([("eval data".to_string(), &self.inputs.eval)]);
        for (label, spec) in data {
            if let DataSpec::Llava { json, images, .. } = spec {
                for path in std::iter::once(json).chain(images) {
                    if !paths.iter().any(|(_, p)| p == path) {
                        paths.push((label.clone(), path.clone()));
                    }
                }
            }
        }
        paths
    }
}
