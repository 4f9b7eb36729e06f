//! What a connector author depends on.
//!
//! A connector is a [`ConnectorFactory`] that turns its recipe section into a
//! [`Connector`]. It declares what it needs before any tensor exists (so a recipe
//! that cannot work is refused up front), then builds its module from a
//! `VarBuilder` — one code path for fresh initialisation, loading and training.
//! Built-in connectors register through [`export_connector!`] exactly as outside
//! plugins do.
//!
//! ```ignore
//! use vlmkit_plugin::prelude::*;
//!
//! struct MyFactory;
//! impl ConnectorFactory for MyFactory { /* … */ }
//! vlmkit_plugin::export_connector!(MyFactory);
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

pub use candle_core;
pub use candle_nn;
pub use toml;
pub use vlmkit_core;
pub use vlmkit_recipe::{Settings, SettingsError};

use candle_nn::VarBuilder;
use vlmkit_core::{Connector, ConnectorNeeds, VisionInfo};

pub mod decl;
pub mod loader;

pub use decl::{Fingerprint, PluginDecl};
pub use loader::Registrar;

/// Everything a connector author usually needs, in one import.
pub mod prelude {
    pub use super::{ConnectorEnv, ConnectorFactory, ParamGroup, Settings, SettingsError};
    pub use candle_core::{DType, Device, Tensor, D};
    pub use candle_nn::VarBuilder;
    pub use vlmkit_core::nn;
    pub use vlmkit_core::ops;
    pub use vlmkit_core::{
        Connector, ConnectorNeeds, ConnectorOutput, Placement, TextContext, VisionInfo,
        VisualFeatures,
    };
}

/// What a connector is built against.
#[derive(Debug, Clone)]
pub struct ConnectorEnv {
    pub vision: VisionInfo,
    /// The hidden states the connector receives (absolute indices, recipe order).
    pub layers: Vec<usize>,
    /// Width of the visual tokens it must produce (the language model's width).
    pub llm_hidden: usize,
    /// Width of the text context embeddings.
    pub text_hidden: usize,
    /// Decoder layers of the language model (where interleaved blocks can go).
    pub llm_layers: usize,
    /// The pretrained weights the connector declared it loads itself
    /// ([`ConnectorNeeds::weight_dirs`]): setting key → directory, resolved and
    /// checked to exist. Empty when only shapes are wanted (`vlmkit params`, the
    /// recipe's own checks): the connector then builds its trainable weights and
    /// leaves the pretrained part unread.
    pub weight_dirs: BTreeMap<String, PathBuf>,
}

impl ConnectorEnv {
    /// Width of hidden state `abs` (absolute index).
    pub fn width(&self, abs: usize) -> usize {
        self.vision.widths[abs]
    }

    /// Resolves a HF-style index (negative from the end) against the encoder, and
    /// checks it is among the selected layers.
    pub fn selected(
        &self,
        index: i64,
        key: &str,
        settings: &Settings,
    ) -> Result<usize, SettingsError> {
        let abs = self
            .vision
            .resolve(index)
            .map_err(|e| settings.error(key, e.to_string()))?;
        if !self.layers.contains(&abs) {
            return Err(settings.error(
                key,
                format!(
                    "hs[{index}] (= hs[{abs}]) is not among the vision layers the recipe selects {:?}; add it to `vision.layers`",
                    self.layers
                ),
            ));
        }
        Ok(abs)
    }
}

impl ConnectorEnv {
    /// Checks that hidden state `layer` is selected and has the width and grid of
    /// hidden state `base` (absolute indices): `who` names the connector in the
    /// message, `key` the setting that asked for the layer.
    pub fn check_same_shape(
        &self,
        layer: usize,
        base: usize,
        who: &str,
        key: &str,
        settings: &Settings,
    ) -> Result<(), SettingsError> {
        self.selected(layer as i64, key, settings)?;
        let shape = |l: usize| (self.width(l), self.vision.grids[l]);
        if shape(layer) != shape(base) {
            let ((w, g), (bw, bg)) = (shape(layer), shape(base));
            return Err(settings.error(
                key,
                format!(
                    "{who} combines hs[{layer}] ({w}×{g:?}) with hs[{base}] ({bw}×{bg:?}); they must have the same width and grid"
                ),
            ));
        }
        Ok(())
    }
}

/// The hidden states a connector reads by default: `layers` and `base`, sorted,
/// each once (HF indices).
pub fn default_layers(layers: impl IntoIterator<Item = usize>, base: usize) -> Vec<i64> {
    let mut all: Vec<usize> = layers.into_iter().chain([base]).collect();
    all.sort_unstable();
    all.dedup();
    all.into_iter().map(|l| l as i64).collect()
}

/// A connector's default settings as the table `vlmkit plugins list` shows.
pub fn settings_table<T: serde::Serialize>(defaults: &T) -> toml::Table {
    toml::Table::try_from(defaults).expect("connector settings serialise as a TOML table")
}

/// A named share of a connector's parameters, for `vlmkit params` (e.g. CCRA's
/// attention part apart from its projector).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamGroup {
    pub name: &'static str,
    /// Parameter-name prefixes (relative to the connector) that belong to it.
    pub prefixes: Vec<&'static str>,
}

/// Builds one kind of connector from its recipe section.
pub trait ConnectorFactory: Send + Sync {
    /// The `kind` a recipe names (`[connector] kind = "…"`).
    fn kind(&self) -> &'static str;

    /// One line on what it is.
    fn summary(&self) -> &'static str;

    /// The settings it accepts, with their defaults (for `vlmkit plugins list`).
    fn defaults(&self) -> toml::Table;

    /// Validates the settings and declares what the connector needs. No tensors.
    fn needs(
        &self,
        settings: &Settings,
        vision: &VisionInfo,
    ) -> Result<ConnectorNeeds, SettingsError>;

    /// Checks the settings against the selected layers and model widths. No tensors.
    fn check(&self, settings: &Settings, env: &ConnectorEnv) -> Result<(), SettingsError> {
        let _ = (settings, env);
        Ok(())
    }

    /// Builds the connector; its weights live under `vb`.
    fn build(
        &self,
        settings: &Settings,
        env: &ConnectorEnv,
        vb: VarBuilder,
    ) -> Result<Box<dyn Connector>, BuildError>;

    /// How many visual tokens a prefix connector places in the sequence; by default
    /// one per patch of the first selected layer. No tensors.
    fn visual_tokens(
        &self,
        settings: &Settings,
        env: &ConnectorEnv,
    ) -> Result<usize, SettingsError> {
        let _ = settings;
        let (rows, cols) = env.vision.grids[env.layers[0]];
        Ok(rows * cols)
    }

    /// Named groups of its parameters, reported separately by `vlmkit params`.
    fn param_groups(&self) -> Vec<ParamGroup> {
        Vec::new()
    }
}

impl std::fmt::Debug for dyn ConnectorFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnectorFactory({})", self.kind())
    }
}

/// Why a connector could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Where a registered connector came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    BuiltIn,
    Plugin(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::BuiltIn => write!(f, "built-in"),
            Origin::Plugin(p) => write!(f, "plugin {}", p.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "connector `{kind}` from {new} collides with the one already registered from {existing}"
    )]
    Duplicate {
        kind: String,
        existing: Origin,
        new: Origin,
    },
}

/// A registered factory and its origin.
#[derive(Clone)]
pub struct Registered {
    pub factory: Arc<dyn ConnectorFactory>,
    pub origin: Origin,
}

/// The connectors this process knows, by kind.
#[derive(Clone, Default)]
pub struct Registry {
    entries: BTreeMap<String, Registered>,
    /// Set by a host that can load plugins (it links the shared API library).
    host: Option<loader::Host>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.entries.keys()).finish()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(
        &mut self,
        factory: Arc<dyn ConnectorFactory>,
        origin: Origin,
    ) -> Result<(), RegistryError> {
        let kind = factory.kind().to_string();
        if let Some(existing) = self.entries.get(&kind) {
            return Err(RegistryError::Duplicate {
                kind,
                existing: existing.origin.clone(),
                new: origin,
            });
        }
        self.entries.insert(kind, Registered { factory, origin });
        Ok(())
    }

    pub fn get(&self, kind: &str) -> Option<&Registered> {
        self.entries.get(kind)
    }

    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Registered)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Lets this registry load plugins for `host`.
    pub fn with_host(mut self, host: loader::Host) -> Self {
        self.host = Some(host);
        self
    }

    /// The host plugins are checked against, when this process can load them.
    pub fn host(&self) -> Option<&loader::Host> {
        self.host.as_ref()
    }

    /// Loads the plugin at `path` (checked against the host, `pin` its expected
    /// sha256) and registers its connectors.
    pub fn load_plugin(
        &mut self,
        path: &std::path::Path,
        pins: &BTreeMap<String, String>,
    ) -> Result<std::sync::Arc<loader::LoadedPlugin>, loader::LoadError> {
        let host = self.host.ok_or_else(|| loader::LoadError::Host {
            reason: "it was built without the shared API library (libvlmkit_api.so)".to_string(),
        })?;
        let plugin = loader::load(path, &host, pins)?;
        if !self.already_has(&plugin) {
            plugin.register_into(self)?;
        }
        Ok(plugin)
    }

    /// This registry plus the plugins a recipe names (`[plugins] paths`, each
    /// pinned by `sha256` when the recipe says so). An error names the recipe key
    /// it comes from.
    pub fn with_plugins(
        &self,
        paths: &[PathBuf],
        pins: &BTreeMap<String, String>,
    ) -> Result<Registry, (String, loader::LoadError)> {
        let mut registry = self.clone();
        let mut names = Vec::new();
        for (i, path) in paths.iter().enumerate() {
            let plugin = registry
                .load_plugin(path, pins)
                .map_err(|e| (format!("plugins.paths.{i}"), e))?;
            names.push(plugin.decl.name());
        }
        if let Some(name) = pins.keys().find(|name| !names.contains(name)) {
            return Err((
                format!("plugins.sha256.\"{name}\""),
                loader::LoadError::UnusedPin {
                    name: name.clone(),
                    loaded: names,
                },
            ));
        }
        Ok(registry)
    }

    /// Whether every connector of `plugin` is already registered from it (a
    /// plugin named both on the command line and in the recipe).
    fn already_has(&self, plugin: &loader::LoadedPlugin) -> bool {
        plugin.factories.iter().all(|f| {
            self.entries
                .get(f.kind())
                .is_some_and(|r| r.origin == Origin::Plugin(plugin.path.clone()))
        })
    }
}

/// Exports a connector factory: defines `pub fn register(&mut Registry)` for the
/// crate, which the host calls for built-ins.
#[macro_export]
macro_rules! export_connector {
    ($factory:expr) => {
        /// Registers this crate's connector.
        pub fn register(
            registry: &mut $crate::Registry,
        ) -> ::std::result::Result<(), $crate::RegistryError> {
            registry.register(::std::sync::Arc::new($factory), $crate::Origin::BuiltIn)
        }
    };
}
