//! The model part of a plan: the vision encoder, the connector and the language
//! model, each parsed by its factory, and their agreement — the layers the
//! connector reads, its widths, the positions its tokens take — checked before any
//! tensor exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Result as TensorResult};
use candle_nn::VarBuilder;
use vlmkit_core::params::{Missing, ParamStore};
use vlmkit_core::{Connector, ConnectorNeeds, LossRegistry, Placement, Vlm};
use vlmkit_models::{LlmSpec, Source, VisionSpec};
use vlmkit_plugin::{ConnectorBuildError, ConnectorConfig, ConnectorEnv};
use vlmkit_recipe::{Recipe, RecipeError};

use super::Purpose;
use crate::{Components, PipelineError};

/// The model a recipe describes, validated.
#[derive(Clone)]
pub struct ModelPlan {
    pub vision: VisionSpec,
    pub llm: LlmSpec,
    /// The connector's factory and its settings, parsed once.
    pub connector: ConnectorConfig,
    pub needs: ConnectorNeeds,
    pub env: ConnectorEnv,
    /// Visual tokens the connector places in the sequence (prefix connectors).
    pub visual_tokens: usize,
    /// The dtype activations are computed in (`run.dtype`); parameters, optimizer
    /// state and checkpoints stay f32.
    pub compute_dtype: DType,
    /// The host losses a model's stage can name.
    pub losses: LossRegistry,
}

/// A plan's parameters by name, without their values.
#[derive(Debug, Clone)]
pub struct ParamShapes {
    /// Shape of every parameter, sorted by name.
    pub shapes: BTreeMap<String, Vec<usize>>,
    /// Prefixes of parameters no gradient can reach (see [`ModelPlan::unused_params`]).
    pub unused: Vec<String>,
}

impl ModelPlan {
    /// Parses the `[vision]`, `[llm]` and `[connector]` sections with the
    /// factories `components` holds and checks that they fit together.
    pub(super) fn new(
        recipe: &Recipe,
        components: &Components,
        purpose: Purpose,
    ) -> Result<Self, RecipeError> {
        let vision =
            VisionSpec::from_settings(&recipe.section("vision"), recipe, &components.vision)
                .map_err(|e| recipe.error_for(e))?;
        let llm = LlmSpec::from_settings(&recipe.section("llm"), recipe)
            .map_err(|e| recipe.error_for(e))?;
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

        let connector = configure_connector(recipe, components)?;
        let kind = connector.kind();
        let info = vision.info();
        let needs = connector.needs(&info).map_err(|e| recipe.error_for(e))?;
        let weight_dirs = match purpose {
            Purpose::Run => existing_weight_dirs(recipe, &needs)?,
            Purpose::Inspect => BTreeMap::new(),
        };
        let layers = selected_layers(recipe, &vision, &needs, kind)?;
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
        Ok(Self {
            vision,
            llm,
            connector,
            needs,
            env,
            visual_tokens,
            compute_dtype: match recipe.run.dtype.as_str() {
                "bf16" => DType::BF16,
                "f16" => DType::F16,
                _ => DType::F32,
            },
            losses: components.losses.clone(),
        })
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

    /// A floor under the memory one micro-batch of `batch` examples takes, in
    /// bytes: the decoded images and their f32 pixels, the visual tokens at the
    /// language model's width, and each decoder layer's attention over them
    /// (kept for the backward pass). Real use is higher (text, the encoder, the
    /// MLPs); a batch whose floor exceeds the machine's memory cannot run.
    pub fn micro_batch_floor(&self, batch: usize) -> u128 {
        let pixels = 3 * (self.vision.info().image_size as u128).pow(2);
        let tokens = self.visual_tokens.max(1) as u128;
        let llm = self.llm.info();
        let heads = self.llm.config.num_attention_heads as u128;
        let per_example = pixels * (1 + 4)
            + tokens * llm.hidden_size as u128 * 4
            + llm.num_layers as u128 * heads * tokens * tokens * 4;
        batch as u128 * per_example
    }

    /// Builds the model over `store`: parameters it lacks are initialised from the
    /// recipe seed (`Missing::Initialize`) or refused (`Missing::Error`);
    /// `trainable(name)` decides which ones take part in the autograd graph;
    /// `loss_weights` are the stage's (the host losses it names are computed).
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
        root: VarBuilder<'static>,
        device: Device,
        loss_weights: BTreeMap<String, f64>,
    ) -> TensorResult<Vlm> {
        self.build_parts(root, device, loss_weights, &self.env)
    }

    fn build_parts(
        &self,
        root: VarBuilder<'static>,
        device: Device,
        loss_weights: BTreeMap<String, f64>,
        env: &ConnectorEnv,
    ) -> TensorResult<Vlm> {
        let vision = self.vision.build(root.pp("vision"))?;
        let llm = self.llm.build(root.pp("llm"))?;
        let connector = self.connector.build(env, root.pp("connector"))?;
        let host_losses = loss_weights
            .keys()
            .filter_map(|name| self.losses.get(name).cloned())
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
            compute_dtype: self.compute_dtype,
        })
    }

    /// The recipe's connector alone, its weights under `vb`.
    pub fn build_connector(
        &self,
        vb: VarBuilder<'static>,
    ) -> Result<Box<dyn Connector>, ConnectorBuildError> {
        self.connector.build(&self.env, vb)
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
            Device::Cpu,
            BTreeMap::new(),
            &shapes_env,
        )?;
        Ok(ParamShapes {
            shapes: recorder.shapes(),
            unused: self.unused_params(&vlm),
        })
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

    /// Creates every parameter of the model in `store` (`missing` says whether
    /// absent ones are initialised or refused) and returns the prefixes of those
    /// that can receive no gradient with this layer selection.
    pub fn create_params(&self, store: &ParamStore, missing: Missing) -> TensorResult<Vec<String>> {
        let probe = self.build(store, missing, Arc::new(|_| true), BTreeMap::new())?;
        Ok(self.unused_params(&probe))
    }

    /// The parameters a fresh run starts from: the parts the recipe names with
    /// `from` read from their checkpoints (every weight, and nothing the model
    /// lacks), the rest initialised from `seed`. Returns what
    /// [`ModelPlan::create_params`] does.
    pub fn create_fresh_params(
        &self,
        store: &ParamStore,
        seed: u64,
    ) -> Result<Vec<String>, PipelineError> {
        let loaded = self.insert_pretrained(store)?;
        store.begin_build();
        let unused = self.create_params(store, Missing::Initialize { seed })?;
        self.check_pretrained(store, &loaded)?;
        Ok(unused)
    }

    /// Puts the weights of the checkpoints the recipe names with `from` into
    /// `store` (under `vision.` and `llm.`); returns their names.
    fn insert_pretrained(&self, store: &ParamStore) -> Result<BTreeSet<String>, PipelineError> {
        let before: BTreeSet<String> = store.vars().into_iter().map(|(n, _)| n).collect();
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
    pub fn pretrained_parts(&self) -> Vec<(&'static str, &Path)> {
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
    pub fn insert_part(&self, store: &ParamStore, part: &str) -> Result<(), PipelineError> {
        let inserted = match (part, &self.vision.source, &self.llm.source) {
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
        };
        inserted.map_err(|e| PipelineError::Pretrained(Box::new(e)))
    }

    /// After the parameters are created: every parameter of a pretrained part came
    /// from its checkpoint (none was initialised in its place), and the checkpoint
    /// held nothing the model does not have.
    fn check_pretrained(
        &self,
        store: &ParamStore,
        loaded: &BTreeSet<String>,
    ) -> Result<(), PipelineError> {
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
                return Err(PipelineError::PretrainedIncomplete {
                    path: path.clone(),
                    what,
                    missing: created.len(),
                    examples: vlmkit_models::hf::name_list(&created, prefix),
                });
            }
            vlmkit_models::hf::check_unexpected(path, store, prefix, tied)
                .map_err(|e| PipelineError::Pretrained(Box::new(e)))?;
        }
        Ok(())
    }
}

/// The recipe's `[connector]` section, parsed by the factory of its `kind`.
fn configure_connector(
    recipe: &Recipe,
    components: &Components,
) -> Result<ConnectorConfig, RecipeError> {
    let section = recipe.section("connector");
    let kind = section
        .get_str("kind")
        .map_err(|e| recipe.error_for(e))?
        .ok_or_else(|| {
            recipe.error_at("connector.kind", "missing: which connector (e.g. \"mlp\")")
        })?;
    let registered = components.connectors.get(kind).ok_or_else(|| {
        let known: Vec<&str> = components.connectors.kinds().collect();
        recipe.error_at(
            "connector.kind",
            format!("unknown connector `{kind}` (known: {})", known.join(", ")),
        )
    })?;
    registered
        .factory
        .clone()
        .configure(&section.without(&["kind"]))
        .map_err(|e| recipe.error_for(e))
}

/// The hidden states the connector receives (absolute indices): the recipe's
/// `vision.layers`, or the connector's default; each once, and of one shape
/// when the connector needs that.
fn selected_layers(
    recipe: &Recipe,
    vision: &VisionSpec,
    needs: &ConnectorNeeds,
    kind: &str,
) -> Result<Vec<usize>, RecipeError> {
    let key = "vision.layers";
    let info = vision.info();
    let requested = vision
        .layers
        .clone()
        .unwrap_or_else(|| needs.default_layers.clone());
    let mut layers = Vec::with_capacity(requested.len());
    for &l in &requested {
        let abs = info
            .resolve(l)
            .map_err(|e| recipe.error_at(key, e.to_string()))?;
        if layers.contains(&abs) {
            return Err(recipe.error_at(key, format!("hs[{l}] (= hs[{abs}]) is selected twice")));
        }
        layers.push(abs);
    }
    if needs.equal_layer_shapes {
        let first = layers[0];
        for &l in &layers[1..] {
            if info.widths[l] != info.widths[first] || info.grids[l] != info.grids[first] {
                return Err(recipe.error_at(
                    key,
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
    Ok(layers)
}

/// The directories of pretrained weights the connector loads itself, resolved
/// against the recipe file that named them, with their full keys.
pub(super) fn connector_weight_dirs(
    recipe: &Recipe,
    needs: &ConnectorNeeds,
) -> Vec<(String, PathBuf)> {
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

/// The connector's own weight directories (setting → directory), each checked
/// to exist on this machine.
fn existing_weight_dirs(
    recipe: &Recipe,
    needs: &ConnectorNeeds,
) -> Result<BTreeMap<String, PathBuf>, RecipeError> {
    let mut dirs = BTreeMap::new();
    for ((setting, _), (key, dir)) in needs
        .weight_dirs
        .iter()
        .zip(connector_weight_dirs(recipe, needs))
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
        dirs.insert(setting.clone(), dir);
    }
    Ok(dirs)
}

/// Why a vision checkpoint cannot be read.
fn checkpoint_missing(dir: &Path) -> String {
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
fn language_model_missing(path: &Path) -> String {
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
