//! From a recipe to a validated plan: every component parsed, the connector's needs
//! checked against the encoder, the tokenizer fixed — before any tensor exists.
//! Every problem comes back as a [`RecipeError`] naming the file, line and key.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::Result as TensorResult;
use vlmkit_core::params::{Missing, ParamStore};
use vlmkit_core::{ConnectorNeeds, Placement, Vlm};
use vlmkit_data::processor::ImageProcessor;
use vlmkit_data::{ChatTemplate, Collator, TextTokenizer};
use vlmkit_models::{LlmSpec, Source, TokenizerSource, VisionSpec};
use vlmkit_plugin::{ConnectorBuildError, ConnectorConfig, ConnectorEnv, Registry};
use vlmkit_recipe::{Recipe, RecipeError};

use crate::batch::BatchBuilder;
use crate::source::{eval_spec, train_spec, DataSpec};

/// The image processor the encoder's pixels come from, before a stage's
/// `image_aspect_ratio`: the `from` directory's `preprocessor_config.json` when
/// it has one, else the usual one for the encoder (SigLIP's exact resize;
/// otherwise CLIP's resize of the short side and centre crop), always at the
/// encoder's size and with its normalisation.
fn base_processor(
    recipe: &Recipe,
    vision: &VisionSpec,
    info: &vlmkit_core::VisionInfo,
) -> Result<ImageProcessor, RecipeError> {
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

/// Everything a run needs to know, validated.
#[derive(Clone)]
pub struct Plan {
    pub recipe: Recipe,
    pub vision: VisionSpec,
    pub llm: LlmSpec,
    /// The connector's factory and its settings, parsed once.
    pub connector: ConnectorConfig,
    pub needs: ConnectorNeeds,
    pub env: ConnectorEnv,
    /// Visual tokens the connector places in the sequence (prefix connectors).
    pub visual_tokens: usize,
    /// Always present in plans made to run; an inspected plan may lack it.
    tokenizer: Option<Arc<TextTokenizer>>,
    /// `llm.chat_template`: what evaluation and inference prompt with.
    pub template: ChatTemplate,
    /// Each stage's template (its own `chat_template`, else `template`).
    pub stage_templates: Vec<ChatTemplate>,
    /// Each stage's image processor (its `image_aspect_ratio`).
    pub stage_processors: Vec<ImageProcessor>,
}

/// A plan's parameters by name, without their values.
#[derive(Debug, Clone)]
pub struct ParamShapes {
    /// Shape of every parameter, sorted by name.
    pub shapes: BTreeMap<String, Vec<usize>>,
    /// Prefixes of parameters no gradient can reach (see [`Plan::unused_params`]).
    pub unused: Vec<String>,
}

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

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("connector", &self.connector.kind())
            .field("layers", &self.env.layers)
            .finish()
    }
}

impl Plan {
    /// Validates `recipe`. `tokenizer` is the one a checkpoint saved (evaluation and
    /// resume must use exactly that one); `None` builds it from the recipe.
    pub fn new(
        recipe: Recipe,
        registry: &Registry,
        tokenizer: Option<TextTokenizer>,
    ) -> Result<Self, RecipeError> {
        Self::make(recipe, registry, tokenizer, Purpose::Run)
    }

    /// Validates `recipe` for inspection (shapes, counts, settings): pretrained
    /// weight directories and the tokenizer file need not exist; without the
    /// tokenizer, `llm.vocab_size` must be set.
    pub fn inspect(recipe: Recipe, registry: &Registry) -> Result<Self, RecipeError> {
        Self::make(recipe, registry, None, Purpose::Inspect)
    }

    fn make(
        recipe: Recipe,
        registry: &Registry,
        tokenizer: Option<TextTokenizer>,
        purpose: Purpose,
    ) -> Result<Self, RecipeError> {
        // The recipe's own plugins come first: its connector may be one of them.
        let registry = &registry
            .with_plugins(&recipe.plugins.paths, &recipe.plugins.sha256)
            .map_err(|(key, err)| recipe.error_at(&key, err.to_string()))?;
        let vision = VisionSpec::from_settings(
            &recipe.section("vision"),
            &recipe,
            &vlmkit_models::VisionRegistry::builtin(),
        )
        .map_err(|e| recipe.error_for(e))?;
        let llm_settings = recipe.section("llm");
        let mut llm =
            LlmSpec::from_settings(&llm_settings, &recipe).map_err(|e| recipe.error_for(e))?;
        if purpose == Purpose::Run {
            if let Some(dir) = vision.source.local_dir() {
                if !dir.join("config.json").is_file() {
                    return Err(recipe.error_at("vision.from", checkpoint_missing(dir)));
                }
            }
            if let (Some(path), false) = (llm.source.local_dir(), llm.pretrained) {
                return Err(recipe.error_at("llm.from", language_model_missing(path)));
            }
        }

        let conn_section = recipe.section("connector");
        let kind = conn_section
            .get_str("kind")
            .map_err(|e| recipe.error_for(e))?
            .ok_or_else(|| {
                recipe.error_at("connector.kind", "missing: which connector (e.g. \"mlp\")")
            })?;
        let factory = registry.get(kind).ok_or_else(|| {
            let known: Vec<&str> = registry.kinds().collect();
            recipe.error_at(
                "connector.kind",
                format!("unknown connector `{kind}` (known: {})", known.join(", ")),
            )
        })?;
        let connector = factory
            .factory
            .clone()
            .configure(&conn_section.without(&["kind"]))
            .map_err(|e| recipe.error_for(e))?;
        let info = vision.info();
        let needs = connector.needs(&info).map_err(|e| recipe.error_for(e))?;
        let mut weight_dirs = BTreeMap::new();
        if purpose == Purpose::Run {
            for ((setting, _), (key, dir)) in needs
                .weight_dirs
                .iter()
                .zip(connector_weight_dirs(&recipe, &needs))
            {
                if !dir.is_dir() {
                    return Err(recipe.error_at(
                        &key,
                        format!(
                            "`{}` is not a directory on this machine (a local Hugging Face directory: config.json, model.safetensors, tokenizer.json)",
                            dir.display()
                        ),
                    ));
                }
                weight_dirs.insert(setting.clone(), dir);
            }
        }

        // The hidden states the connector receives: the recipe's choice, or the
        // connector's default.
        let layer_key = "vision.layers";
        let requested = vision
            .layers
            .clone()
            .unwrap_or_else(|| needs.default_layers.clone());
        let mut layers = Vec::with_capacity(requested.len());
        for &l in &requested {
            let abs = info
                .resolve(l)
                .map_err(|e| recipe.error_at(layer_key, e.to_string()))?;
            if layers.contains(&abs) {
                return Err(recipe.error_at(
                    layer_key,
                    format!("hs[{l}] (= hs[{abs}]) is selected twice"),
                ));
            }
            layers.push(abs);
        }
        if needs.equal_layer_shapes {
            let first = layers[0];
            for &l in &layers[1..] {
                if info.widths[l] != info.widths[first] || info.grids[l] != info.grids[first] {
                    return Err(recipe.error_at(
                        layer_key,
                        format!(
                            "connector `{kind}` needs every selected layer to have the same shape, but hs[{first}] is {}×{:?} and hs[{l}] is {}×{:?}",
                            info.widths[first], info.grids[first], info.widths[l], info.grids[l]
                        ),
                    ));
                }
            }
        }
        if needs.reads_cls && !info.has_cls {
            return Err(recipe.error_at(
                "connector.kind",
                format!(
                    "connector `{kind}` reads the class token, but vision encoder `{}` has none",
                    vision.kind
                ),
            ));
        }

        let tokenizer = match tokenizer {
            Some(t) => Some(t),
            None => build_tokenizer(&recipe, &llm, purpose)?,
        };
        if let Some(tokenizer) = &tokenizer {
            llm.fit_vocab(tokenizer.vocab_size(), tokenizer.image, &llm_settings)
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

        let base = base_processor(&recipe, &vision, &info)?;
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

        let env = ConnectorEnv {
            vision: info,
            layers,
            llm_hidden: llm.config.hidden_size,
            text_hidden: llm.config.hidden_size,
            llm_layers: llm.config.num_hidden_layers,
            weight_dirs,
        };
        connector.check(&env).map_err(|e| recipe.error_for(e))?;
        let visual_tokens = connector
            .visual_tokens(&env)
            .map_err(|e| recipe.error_for(e))?;
        if needs.placement == Placement::Prefix
            && visual_tokens >= llm.config.max_position_embeddings
        {
            return Err(recipe.error_at(
                "llm.max_position_embeddings",
                format!(
                    "{} positions leave no room for text after the {visual_tokens} visual tokens connector `{kind}` places",
                    llm.config.max_position_embeddings
                ),
            ));
        }

        let losses = vlmkit_core::LossRegistry::builtin();
        for (i, stage) in recipe.stages.iter().enumerate() {
            for name in stage.losses.keys() {
                let key = format!("stage.{i}.losses.{name}");
                if let Some(loss) = losses.get(name) {
                    loss.check(kind, &needs)
                        .map_err(|why| recipe.error_at(&key, why))?;
                } else if !needs.aux_losses.iter().any(|a| a == name) {
                    let mut all: Vec<String> = losses.names().map(str::to_string).collect();
                    all.extend(needs.aux_losses.iter().cloned());
                    return Err(recipe.error_at(
                        &format!("stage.{i}.losses.{name}"),
                        format!(
                            "unknown loss `{name}` for connector `{kind}` (available: {})",
                            all.join(", ")
                        ),
                    ));
                }
            }
            train_spec(&recipe, i)?;
        }
        eval_spec(&recipe)?;

        let plan = Self {
            recipe,
            vision,
            llm,
            connector,
            needs,
            env,
            visual_tokens,
            tokenizer: tokenizer.map(Arc::new),
            template,
            stage_templates,
            stage_processors,
        };
        plan.check_trainable_patterns()?;
        Ok(plan)
    }

    /// The tokenizer; only an inspected plan whose tokenizer file is absent lacks it.
    pub fn tokenizer(&self) -> Result<&Arc<TextTokenizer>, RecipeError> {
        self.tokenizer.as_ref().ok_or_else(|| {
            let path = match &self.llm.tokenizer {
                TokenizerSource::File(path) => path.display().to_string(),
                TokenizerSource::Builtin => "builtin".into(),
            };
            self.recipe.error_at(
                "llm.tokenizer",
                format!("the tokenizer `{path}` was not read (the recipe was only inspected)"),
            )
        })
    }

    /// The keys whose values are paths to files outside the recipe (set or not).
    fn path_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for (key, source) in [
            ("vision.from", &self.vision.source),
            ("llm.from", &self.llm.source),
        ] {
            if let Source::Local(_) = source {
                keys.push(key.to_string());
            }
        }
        if let TokenizerSource::File(_) = &self.llm.tokenizer {
            keys.push("llm.tokenizer".to_string());
        }
        keys.extend((0..self.recipe.plugins.paths.len()).map(|i| format!("plugins.paths.{i}")));
        keys.extend(
            connector_weight_dirs(&self.recipe, &self.needs)
                .into_iter()
                .map(|(k, _)| k),
        );
        let data_tables = ["data.train".to_string(), "data.eval".to_string()]
            .into_iter()
            .chain((0..self.recipe.stages.len()).map(|i| format!("stage.{i}.data")));
        for table in data_tables {
            keys.extend(["json", "images"].map(|k| format!("{table}.{k}")));
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
            self.vision
                .given_way
                .iter()
                .chain(&self.llm.given_way)
                .map(String::as_str),
        )
    }

    /// Files and directories the recipe names outside itself, each with the key or
    /// part of the recipe that names it: pretrained weights, the tokenizer, LLaVA
    /// data.
    pub fn external_paths(&self) -> Vec<(String, std::path::PathBuf)> {
        let mut paths = Vec::new();
        for (key, source) in [
            ("vision.from", &self.vision.source),
            ("llm.from", &self.llm.source),
        ] {
            if let Source::Local(dir) = source {
                paths.push((key.to_string(), dir.clone()));
            }
        }
        if let TokenizerSource::File(path) = &self.llm.tokenizer {
            paths.push(("llm.tokenizer".to_string(), path.clone()));
        }
        paths.extend(connector_weight_dirs(&self.recipe, &self.needs));
        let mut data: Vec<(String, DataSpec)> = self
            .recipe
            .stages
            .iter()
            .enumerate()
            .filter_map(|(i, stage)| {
                Some((
                    format!("stage `{}` data", stage.name),
                    self.train_data(i).ok()?,
                ))
            })
            .collect();
        data.extend(self.eval_data().ok().map(|d| ("eval data".to_string(), d)));
        for (label, spec) in data {
            if let DataSpec::Llava { json, images, .. } = spec {
                for path in std::iter::once(json).chain(images) {
                    if !paths.iter().any(|(_, p)| *p == path) {
                        paths.push((label.clone(), path));
                    }
                }
            }
        }
        paths
    }

    /// Every stage's `trainable` patterns must select at least one parameter,
    /// and its `part_lr` patterns at least one parameter the stage trains.
    /// Checked on shapes alone (nothing is allocated).
    fn check_trainable_patterns(&self) -> Result<(), RecipeError> {
        let shapes = self
            .param_shapes()
            .map_err(|e| self.recipe.error_at("vision", e.to_string()))?;
        let names: Vec<&String> = shapes.shapes.keys().collect();
        for (i, stage) in self.recipe.stages.iter().enumerate() {
            for pattern in &stage.trainable {
                if !names.iter().any(|n| pattern_matches(pattern, n)) {
                    return Err(self.recipe.error_at(
                        &format!("stage.{i}.trainable"),
                        format!(
                            "pattern `{pattern}` matches no parameter (top-level components: vision, connector, llm)"
                        ),
                    ));
                }
            }
            let trained = |name: &str| stage.trainable.iter().any(|t| pattern_matches(t, name));
            for pattern in stage.part_lr.keys() {
                if !names
                    .iter()
                    .any(|n| pattern_matches(pattern, n) && trained(n))
                {
                    return Err(self.recipe.error_at(
                        &format!("stage.{i}.part_lr"),
                        format!(
                            "pattern `{pattern}` matches no parameter that stage `{}` trains (trainable: {})",
                            stage.name,
                            stage.trainable.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The loss weights of a stage: its `losses` table, and weight 1 for each of the
    /// connector's own auxiliary losses the table does not mention.
    pub fn loss_weights(&self, stage: &vlmkit_recipe::StageConfig) -> BTreeMap<String, f64> {
        let mut weights = stage.losses.clone();
        for aux in &self.needs.aux_losses {
            weights.entry(aux.clone()).or_insert(1.0);
        }
        weights
    }

    /// Every parameter's shape, and the prefixes of those no gradient can reach,
    /// from a build that records shapes and allocates nothing (so paper-scale
    /// recipes cost nothing).
    pub fn param_shapes(&self) -> TensorResult<ParamShapes> {
        let recorder = vlmkit_core::params::ShapeRecorder::new();
        // Shapes only: pretrained parts the connector loads itself stay unread.
        let shapes_env = ConnectorEnv {
            weight_dirs: BTreeMap::new(),
            ..self.env.clone()
        };
        let vlm = self.build_parts(
            recorder.builder(),
            candle_core::Device::Cpu,
            BTreeMap::new(),
            &shapes_env,
        )?;
        Ok(ParamShapes {
            shapes: recorder.shapes(),
            unused: self.unused_params(&vlm),
        })
    }

    /// Builds the model over `store`: parameters it lacks are initialised from the
    /// recipe seed (`Missing::Initialize`) or refused (`Missing::Error`);
    /// `trainable(name)` decides which ones take part in the autograd graph.
    pub fn build(
        &self,
        store: &ParamStore,
        missing: Missing,
        trainable: Arc<dyn Fn(&str) -> bool + Send + Sync>,
        loss_weights: BTreeMap<String, f64>,
    ) -> TensorResult<Vlm> {
        // Structured starting values matter only where parameters are created.
        if let Missing::Initialize { .. } = missing {
            store.set_initial_values(
                self.vision
                    .initial_values()?
                    .into_iter()
                    .map(|(name, value)| (format!("vision.{name}"), value)),
            );
        }
        self.build_with(
            store.builder(missing, trainable),
            store.device().clone(),
            loss_weights,
        )
    }

    /// Builds the model from any `VarBuilder` (e.g. a [`vlmkit_core::params::ShapeRecorder`]).
    pub fn build_with(
        &self,
        root: candle_nn::VarBuilder<'static>,
        device: candle_core::Device,
        loss_weights: BTreeMap<String, f64>,
    ) -> TensorResult<Vlm> {
        self.build_parts(root, device, loss_weights, &self.env)
    }

    fn build_parts(
        &self,
        root: candle_nn::VarBuilder<'static>,
        device: candle_core::Device,
        loss_weights: BTreeMap<String, f64>,
        env: &ConnectorEnv,
    ) -> TensorResult<Vlm> {
        let vision = self.vision.build(root.pp("vision"))?;
        let llm = self.llm.build(root.pp("llm"))?;
        let connector = self.connector.build(env, root.pp("connector"))?;
        let losses = vlmkit_core::LossRegistry::builtin();
        let host_losses = loss_weights
            .keys()
            .filter_map(|name| losses.get(name).cloned())
            .collect();
        Ok(Vlm {
            vision,
            connector,
            llm,
            layers: self.env.layers.clone(),
            needs: self.needs.clone(),
            loss_weights,
            host_losses,
            device,
            compute_dtype: self.compute_dtype(),
        })
    }

    /// The dtype activations are computed in (`run.dtype`); parameters, optimizer
    /// state and checkpoints stay f32.
    pub fn compute_dtype(&self) -> candle_core::DType {
        match self.recipe.run.dtype.as_str() {
            "bf16" => candle_core::DType::BF16,
            "f16" => candle_core::DType::F16,
            _ => candle_core::DType::F32,
        }
    }

    /// The recipe's connector alone, its weights under `vb`.
    pub fn build_connector(
        &self,
        vb: candle_nn::VarBuilder<'static>,
    ) -> Result<Box<dyn vlmkit_core::Connector>, ConnectorBuildError> {
        self.connector.build(&self.env, vb)
    }

    /// The token grid region masks are compared on, when a stage weights the Dice
    /// loss: the grid of the first selected layer, which the connector's grounding
    /// map covers.
    pub fn grounding_grid(&self) -> Option<(usize, usize)> {
        self.needs.grounding_map.as_ref()?;
        let losses = vlmkit_core::LossRegistry::builtin();
        let weighted = self.recipe.stages.iter().any(|s| {
            s.losses
                .keys()
                .any(|name| losses.get(name).is_some_and(|l| l.reads_region_masks()))
        });
        weighted.then(|| self.env.vision.grids[self.env.layers[0]])
    }

    /// Positions left for text next to `visual_tokens` prefix tokens (which replace
    /// the one placeholder token).
    pub fn text_budget(&self, visual_tokens: usize) -> usize {
        let max = self.llm.config.max_position_embeddings;
        match self.needs.placement {
            Placement::Prefix => max.saturating_sub(visual_tokens.saturating_sub(1)),
            Placement::Interleaved => max,
        }
    }

    /// Creates every parameter of the model in `store` (`missing` says whether
    /// absent ones are initialised or refused) and returns the prefixes of those
    /// that can receive no gradient with this layer selection.
    pub fn create_params(&self, store: &ParamStore, missing: Missing) -> TensorResult<Vec<String>> {
        let probe = self.build(store, missing, Arc::new(|_| true), BTreeMap::new())?;
        Ok(self.unused_params(&probe))
    }

    /// The parameters a fresh run starts from: the parts the recipe names with
    /// `from` read from their checkpoints (every weight, and nothing the model
    /// lacks), the rest initialised from the recipe seed. Returns what
    /// [`Plan::create_params`] does.
    pub fn create_fresh_params(
        &self,
        store: &ParamStore,
    ) -> Result<Vec<String>, crate::TrainError> {
        let invalid = |e: String| crate::TrainError::Invalid(e);
        let loaded = self
            .insert_pretrained(store)
            .map_err(|e| invalid(e.to_string()))?;
        store.begin_build();
        let seed = self.recipe.run.seed;
        let unused = self.create_params(store, Missing::Initialize { seed })?;
        self.check_pretrained(store, &loaded).map_err(invalid)?;
        Ok(unused)
    }

    /// Puts the weights of the checkpoints the recipe names with `from` into
    /// `store` (under `vision.` and `llm.`); returns their names.
    fn insert_pretrained(
        &self,
        store: &ParamStore,
    ) -> Result<std::collections::BTreeSet<String>, vlmkit_models::hf::HfError> {
        let before: std::collections::BTreeSet<String> =
            store.vars().into_iter().map(|(n, _)| n).collect();
        for (part, _) in self.pretrained_parts() {
            self.insert_part(store, part)?;
        }
        Ok(store
            .vars()
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| !before.contains(n))
            .collect())
    }

    /// The parts the recipe reads from a `from` source: `("vision", path)`,
    /// `("llm", path)`.
    pub fn pretrained_parts(&self) -> Vec<(&'static str, &std::path::Path)> {
        let mut parts = Vec::new();
        if let Source::Local(dir) = &self.vision.source {
            parts.push(("vision", dir.as_path()));
        }
        if let Source::Local(path) = &self.llm.source {
            parts.push(("llm", path.as_path()));
        }
        parts
    }

    /// Puts the weights of pretrained part `part` (`"vision"` or `"llm"`) into
    /// `store` under `{part}.`; a part without a `from` source puts nothing.
    pub fn insert_part(
        &self,
        store: &ParamStore,
        part: &str,
    ) -> Result<(), vlmkit_models::hf::HfError> {
        match (part, &self.vision.source, &self.llm.source) {
            ("vision", Source::Local(dir), _) => vlmkit_models::hf::vision::insert_vision_weights(
                dir,
                store,
                "vision.",
                self.vision.factory.as_ref(),
            ),
            ("llm", _, Source::Local(path)) => {
                vlmkit_models::hf::insert_weights(path, store, "llm.")
            }
            _ => Ok(()),
        }
    }

    /// The pretrained parts that no stage up to `stage` (the stage in progress)
    /// trains: their weights are still exactly their source's, so a checkpoint
    /// leaves them out (as LLaVA's stage 1 saves only the projector) and they are
    /// read back from the source.
    pub fn frozen_pretrained_parts(&self, stage: usize) -> Vec<&'static str> {
        let trained = |part: &str| {
            self.recipe.stages.iter().take(stage + 1).any(|s| {
                s.trainable.iter().any(|pattern| {
                    let first = expand_pattern(pattern);
                    let first = first.split('.').next().unwrap_or_default();
                    first == part || first == "*"
                })
            })
        };
        self.pretrained_parts()
            .into_iter()
            .map(|(part, _)| part)
            .filter(|part| !trained(part))
            .collect()
    }

    /// After the parameters are created: every parameter of a pretrained part came
    /// from its checkpoint (none was initialised in its place), and the checkpoint
    /// held nothing the model does not have.
    fn check_pretrained(
        &self,
        store: &ParamStore,
        loaded: &std::collections::BTreeSet<String>,
    ) -> Result<(), String> {
        let parts = [
            ("vision.", &self.vision.source, "the vision encoder", false),
            (
                "llm.",
                &self.llm.source,
                "the language model",
                self.llm.config.tie_word_embeddings,
            ),
        ];
        for (prefix, source, what, tied) in parts {
            let Source::Local(path) = source else {
                continue;
            };
            let created: Vec<String> = store
                .vars()
                .into_iter()
                .map(|(n, _)| n)
                .filter(|n| n.starts_with(prefix) && !loaded.contains(n))
                .collect();
            if !created.is_empty() {
                return Err(format!(
                    "{}: {} weight(s) of {what} are missing, e.g. {}",
                    path.display(),
                    created.len(),
                    vlmkit_models::hf::name_list(&created, prefix)
                ));
            }
            vlmkit_models::hf::check_unexpected(path, store, prefix, tied)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Turns examples into batches for this model on `device`.
    pub fn batch_builder(&self, device: candle_core::Device) -> Result<BatchBuilder, RecipeError> {
        Ok(BatchBuilder {
            collator: self.collator(self.visual_tokens)?,
            vision: self.env.vision.clone(),
            device,
            grounding_grid: self.grounding_grid(),
            processor: self.processor().clone(),
        })
    }

    /// What evaluation, inference and export preprocess images with: the last
    /// stage's processor (a recipe has at least one stage).
    pub fn processor(&self) -> &ImageProcessor {
        self.stage_processors
            .last()
            .expect("a recipe has at least one stage")
    }

    pub fn collator(&self, visual_tokens: usize) -> Result<Collator, RecipeError> {
        Ok(Collator {
            tokenizer: self.tokenizer()?.clone(),
            template: self.template.clone(),
            max_text_len: self.text_budget(visual_tokens),
        })
    }

    /// As [`Plan::batch_builder`], with stage `stage`'s chat template.
    pub fn stage_batch_builder(
        &self,
        stage: usize,
        device: candle_core::Device,
    ) -> Result<BatchBuilder, RecipeError> {
        let mut builder = self.batch_builder(device)?;
        builder.collator.template = self.stage_templates[stage].clone();
        builder.processor = self.stage_processors[stage].clone();
        Ok(builder)
    }

    /// Prefixes (relative to the whole model) of parameters that can receive no
    /// gradient with this layer selection.
    pub fn unused_params(&self, vlm: &Vlm) -> Vec<String> {
        vlm.vision
            .unused_params(&self.env.layers)
            .into_iter()
            .map(|p| format!("vision.{p}"))
            .collect()
    }

    pub fn train_data(&self, stage: usize) -> Result<DataSpec, RecipeError> {
        train_spec(&self.recipe, stage)
    }

    pub fn eval_data(&self) -> Result<DataSpec, RecipeError> {
        eval_spec(&self.recipe)
    }
}

/// The directories of pretrained weights the connector loads itself, resolved
/// against the recipe file that named them, with their full keys.
fn connector_weight_dirs(
    recipe: &Recipe,
    needs: &ConnectorNeeds,
) -> Vec<(String, std::path::PathBuf)> {
    needs
        .weight_dirs
        .iter()
        .map(|(key, raw)| {
            let key = format!("connector.{key}");
            let dir = recipe.path_value(&key).unwrap_or_else(|| raw.into());
            (key, dir)
        })
        .collect()
}

/// Why a vision checkpoint cannot be read.
fn checkpoint_missing(dir: &std::path::Path) -> String {
    let state = if dir.is_dir() {
        "exists, but has no config.json"
    } else {
        "does not exist on this machine"
    };
    format!(
        "`{}` ({state}): a Hugging Face vision encoder directory holds config.json and safetensors weights; this recipe can be inspected (`vlmkit params`, `vlmkit recipe check`) without it, but not run",
        dir.display()
    )
}

/// Why a language-model checkpoint cannot be read.
fn language_model_missing(path: &std::path::Path) -> String {
    let state = if path.is_dir() {
        "exists, but has no config.json"
    } else if path.is_file() {
        "is a file, but not a GGUF file"
    } else {
        "does not exist on this machine"
    };
    format!(
        "`{}` ({state}): a language model is a Hugging Face directory (config.json, safetensors weights, tokenizer.json) or a GGUF file; this recipe can be inspected (`vlmkit params`, `vlmkit recipe check`) without it, but not run",
        path.display()
    )
}

/// The tokenizer the recipe names: word level over the data's vocabulary, or a
/// `tokenizer.json`. An inspected plan does without an absent file when the recipe
/// sets `llm.vocab_size`.
fn build_tokenizer(
    recipe: &Recipe,
    llm: &LlmSpec,
    purpose: Purpose,
) -> Result<Option<TextTokenizer>, RecipeError> {
    let path = match &llm.tokenizer {
        TokenizerSource::Builtin => return builtin_tokenizer(recipe).map(Some),
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
    let key = if recipe.value("llm.tokenizer").is_some() {
        "llm.tokenizer"
    } else {
        "llm.from"
    };
    if vlmkit_models::gguf::is_gguf(path) {
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
fn builtin_tokenizer(recipe: &Recipe) -> Result<TextTokenizer, RecipeError> {
    let mut words = Vec::new();
    let mut specs = Vec::new();
    for i in 0..recipe.stages.len() {
        specs.push(train_spec(recipe, i)?);
    }
    specs.push(eval_spec(recipe)?);
    for spec in &specs {
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

/// Whether parameter `name` is selected by a stage's `trainable` pattern: dotted
/// components, `*` matching any one component, the pattern matching a prefix of
/// the name. `vision.blocks.N` and `llm.blocks.N` are shorthands for the encoder's
/// and decoder's N-th block.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let expanded = expand_pattern(pattern);
    let pat: Vec<&str> = expanded.split('.').collect();
    let parts: Vec<&str> = name.split('.').collect();
    pat.len() <= parts.len() && pat.iter().zip(&parts).all(|(p, n)| *p == "*" || p == n)
}

/// The peak learning rate of parameter `name` in `stage`: that of the most
/// specific `part_lr` pattern matching it (the one with the most components),
/// else the stage's `lr`.
pub fn part_lr(stage: &vlmkit_recipe::StageConfig, name: &str) -> f64 {
    stage
        .part_lr
        .iter()
        .filter(|(pattern, _)| pattern_matches(pattern, name))
        .max_by_key(|(pattern, _)| expand_pattern(pattern).split('.').count())
        .map_or(stage.lr, |(_, lr)| *lr)
}

fn expand_pattern(pattern: &str) -> String {
    if let Some(rest) = pattern.strip_prefix("vision.blocks") {
        format!("vision.vision_model.encoder.layers{rest}")
    } else if let Some(rest) = pattern.strip_prefix("llm.blocks") {
        format!("llm.model.layers{rest}")
    } else {
        pattern.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_learning_rates_follow_the_most_specific_pattern() {
        let stage: vlmkit_recipe::StageConfig = toml::from_str(
            "name = \"s\"\ntrainable = [\"connector\", \"llm\"]\nsteps = 1\nlr = 1e-3\nbatch_size = 2\n\
             part_lr = { llm = 2e-5, \"llm.blocks.1\" = 1e-4 }\n",
        )
        .unwrap();
        assert_eq!(part_lr(&stage, "connector.proj.0.weight"), 1e-3);
        assert_eq!(part_lr(&stage, "llm.model.embed_tokens.weight"), 2e-5);
        assert_eq!(
            part_lr(&stage, "llm.model.layers.1.mlp.up_proj.weight"),
            1e-4
        );
        assert_eq!(
            part_lr(&stage, "llm.model.layers.10.mlp.up_proj.weight"),
            2e-5
        );
    }

    #[test]
    fn patterns_match_prefixes_wildcards_and_aliases() {
        let n = "vision.vision_model.encoder.layers.3.mlp.fc1.weight";
        assert!(pattern_matches("vision", n));
        assert!(pattern_matches("vision.blocks.3", n));
        assert!(!pattern_matches("vision.blocks.30", n));
        assert!(!pattern_matches("vision.blocks.2", n));
        assert!(pattern_matches("vision.*.encoder.layers.3.mlp", n));
        assert!(!pattern_matches("visio", n));
        assert!(pattern_matches(
            "llm.blocks.0",
            "llm.model.layers.0.self_attn.q_proj.weight"
        ));
        assert!(pattern_matches("connector", "connector.proj.0.weight"));
    }
}
