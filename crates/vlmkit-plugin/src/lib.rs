//! What a connector author depends on.
//!
//! A connector is a [`ConnectorFactory`] that turns its typed settings (parsed
//! from its recipe section once, by the host) into a [`Connector`]. It declares
//! what it needs before any tensor exists (so a recipe that cannot work is
//! refused up front), then builds its module from a `VarBuilder` — one code path
//! for fresh initialisation, loading and training.
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
    pub use super::{ConfigError, ConnectorEnv, ConnectorFactory, LayerSetting, ParamGroup};
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

/// A problem with one of a connector's settings: the key inside its
/// `[connector]` section (`base_layer`, `text_encoder.from`) and what is wrong,
/// in words a user can act on. The host turns the key into the recipe's file,
/// line and full key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl From<(&str, String)> for ConfigError {
    /// The `(key, message)` pairs configs' own `validate` methods return.
    fn from((key, message): (&str, String)) -> Self {
        Self::new(key, message)
    }
}

/// Resolving the vision layers a setting names, with the error naming the setting.
pub trait LayerSetting {
    /// Resolves the HF-style index `index` (negative from the end) that setting
    /// `key` holds against the encoder: its absolute hidden-state index.
    fn layer(&self, key: &str, index: i64) -> Result<usize, ConfigError>;
}

impl LayerSetting for VisionInfo {
    fn layer(&self, key: &str, index: i64) -> Result<usize, ConfigError> {
        self.resolve(index)
            .map_err(|e| ConfigError::new(key, e.to_string()))
    }
}

impl ConnectorEnv {
    /// Width of hidden state `abs` (absolute index).
    pub fn width(&self, abs: usize) -> usize {
        self.vision.widths[abs]
    }

    /// Resolves the HF-style index `index` that setting `key` holds against the
    /// encoder, and checks it is among the selected layers.
    pub fn selected(&self, key: &str, index: i64) -> Result<usize, ConfigError> {
        let abs = self.vision.layer(key, index)?;
        if !self.layers.contains(&abs) {
            return Err(ConfigError::new(
                key,
                format!(
                    "hs[{index}] (= hs[{abs}]) is not among the vision layers the recipe selects {:?}; add it to `vision.layers`",
                    self.layers
                ),
            ));
        }
        Ok(abs)
    }

    /// Checks that hidden state `layer` is selected and has the width and grid of
    /// hidden state `base` (absolute indices): `who` names the connector in the
    /// message, `key` the setting that asked for the layer.
    pub fn check_same_shape(
        &self,
        layer: usize,
        base: usize,
        who: &str,
        key: &str,
    ) -> Result<(), ConfigError> {
        self.selected(key, layer as i64)?;
        let shape = |l: usize| (self.width(l), self.vision.grids[l]);
        if shape(layer) != shape(base) {
            let ((w, g), (bw, bg)) = (shape(layer), shape(base));
            return Err(ConfigError::new(
                key,
                format!(
                    "{who} combines hs[{layer}] ({w}×{g:?}) with hs[{base}] ({bw}×{bg:?}); they must have the same width and grid"
                ),
            ));
        }
        Ok(())
    }

    /// Patches per image of the first selected layer: the visual tokens of a
    /// prefix connector that places one per patch.
    pub fn patches(&self) -> usize {
        let (rows, cols) = self.vision.grids[self.layers[0]];
        rows * cols
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

/// Builds one kind of connector from its typed settings.
///
/// The host parses the recipe's `[connector]` section into [`Self::Config`] once,
/// keeps it, and hands it to each method: `needs` first (it validates the
/// settings and says what the connector reads), then `check` and
/// `visual_tokens` against the selected layers and the language model, then
/// `build`. A [`ConfigError`] names the setting; the host locates it in the
/// recipe.
pub trait ConnectorFactory: Send + Sync + 'static {
    /// The `[connector]` settings (without `kind`). Derive `Deserialize` with
    /// `deny_unknown_fields` so a misspelt key is refused; `Default` holds the
    /// defaults `vlmkit plugins list` shows.
    type Config: serde::de::DeserializeOwned
        + serde::Serialize
        + Default
        + Clone
        + Send
        + Sync
        + 'static;

    /// The `kind` a recipe names (`[connector] kind = "…"`).
    const KIND: &'static str;

    /// One line on what it is (for `vlmkit plugins list`).
    const SUMMARY: &'static str;

    /// Validates the settings against the encoder and declares what the
    /// connector needs. No tensors.
    fn needs(
        &self,
        config: &Self::Config,
        vision: &VisionInfo,
    ) -> Result<ConnectorNeeds, ConfigError>;

    /// Checks the settings against the selected layers and model widths. No tensors.
    fn check(&self, config: &Self::Config, env: &ConnectorEnv) -> Result<(), ConfigError> {
        let _ = (config, env);
        Ok(())
    }

    /// How many visual tokens a prefix connector places in the sequence; by default
    /// one per patch of the first selected layer. No tensors.
    fn visual_tokens(
        &self,
        config: &Self::Config,
        env: &ConnectorEnv,
    ) -> Result<usize, ConfigError> {
        let _ = config;
        Ok(env.patches())
    }

    /// Builds the connector; its weights live under `vb`.
    fn build(
        &self,
        config: &Self::Config,
        env: &ConnectorEnv,
        vb: VarBuilder,
    ) -> Result<Box<dyn Connector>, BuildError>;

    /// Named groups of its parameters, reported separately by `vlmkit params`.
    fn param_groups(&self) -> Vec<ParamGroup> {
        Vec::new()
    }
}

/// Why a connector could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// A [`ConnectorFactory`] with its config type erased: what a [`Registry`] holds.
pub trait DynConnectorFactory: Send + Sync {
    fn kind(&self) -> &'static str;
    fn summary(&self) -> &'static str;
    /// The settings it accepts, with their defaults (for `vlmkit plugins list`).
    fn defaults(&self) -> toml::Table;
    fn param_groups(&self) -> Vec<ParamGroup>;
    /// Parses a `[connector]` section (without `kind`) into the factory's config,
    /// once; an unknown or mistyped key is refused with its full path.
    fn configure(self: Arc<Self>, settings: &Settings) -> Result<ConnectorConfig, SettingsError>;
}

impl<F: ConnectorFactory> DynConnectorFactory for F {
    fn kind(&self) -> &'static str {
        F::KIND
    }

    fn summary(&self) -> &'static str {
        F::SUMMARY
    }

    fn defaults(&self) -> toml::Table {
        settings_table(&F::Config::default())
    }

    fn param_groups(&self) -> Vec<ParamGroup> {
        ConnectorFactory::param_groups(self)
    }

    fn configure(self: Arc<Self>, settings: &Settings) -> Result<ConnectorConfig, SettingsError> {
        let config: F::Config = settings.parse()?;
        Ok(ConnectorConfig {
            inner: Arc::new(Configured {
                factory: self,
                config,
            }),
            settings: settings.clone(),
        })
    }
}

impl std::fmt::Debug for dyn DynConnectorFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnectorFactory({})", self.kind())
    }
}

/// A factory and the config it parsed, behind the object-safe calls.
trait ConfiguredConnector: Send + Sync {
    fn kind(&self) -> &'static str;
    fn table(&self) -> toml::Table;
    fn needs(&self, vision: &VisionInfo) -> Result<ConnectorNeeds, ConfigError>;
    fn check(&self, env: &ConnectorEnv) -> Result<(), ConfigError>;
    fn visual_tokens(&self, env: &ConnectorEnv) -> Result<usize, ConfigError>;
    fn build(&self, env: &ConnectorEnv, vb: VarBuilder) -> Result<Box<dyn Connector>, BuildError>;
    fn param_groups(&self) -> Vec<ParamGroup>;
}

struct Configured<F: ConnectorFactory> {
    factory: Arc<F>,
    config: F::Config,
}

impl<F: ConnectorFactory> ConfiguredConnector for Configured<F> {
    fn kind(&self) -> &'static str {
        F::KIND
    }

    fn table(&self) -> toml::Table {
        settings_table(&self.config)
    }

    fn needs(&self, vision: &VisionInfo) -> Result<ConnectorNeeds, ConfigError> {
        self.factory.needs(&self.config, vision)
    }

    fn check(&self, env: &ConnectorEnv) -> Result<(), ConfigError> {
        self.factory.check(&self.config, env)
    }

    fn visual_tokens(&self, env: &ConnectorEnv) -> Result<usize, ConfigError> {
        self.factory.visual_tokens(&self.config, env)
    }

    fn build(&self, env: &ConnectorEnv, vb: VarBuilder) -> Result<Box<dyn Connector>, BuildError> {
        self.factory.build(&self.config, env, vb)
    }

    fn param_groups(&self) -> Vec<ParamGroup> {
        self.factory.param_groups()
    }
}

/// A recipe's connector: its factory and the settings it parsed once, which the
/// host keeps and builds from (cheap to clone). Errors come back located at the
/// recipe key.
#[derive(Clone)]
pub struct ConnectorConfig {
    inner: Arc<dyn ConfiguredConnector>,
    /// The section it was parsed from (the full keys of errors).
    settings: Settings,
}

impl std::fmt::Debug for ConnectorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorConfig")
            .field("kind", &self.kind())
            .field("settings", self.settings.table())
            .finish()
    }
}

impl ConnectorConfig {
    /// The connector's `kind`.
    pub fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    /// The section the settings were parsed from (without `kind`).
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The settings as parsed, the defaults of those the recipe leaves out
    /// filled in.
    pub fn resolved_table(&self) -> toml::Table {
        self.inner.table()
    }

    fn locate(&self, error: ConfigError) -> SettingsError {
        self.settings.error(&error.key, error.message)
    }

    /// See [`ConnectorFactory::needs`].
    pub fn needs(&self, vision: &VisionInfo) -> Result<ConnectorNeeds, SettingsError> {
        self.inner.needs(vision).map_err(|e| self.locate(e))
    }

    /// See [`ConnectorFactory::check`].
    pub fn check(&self, env: &ConnectorEnv) -> Result<(), SettingsError> {
        self.inner.check(env).map_err(|e| self.locate(e))
    }

    /// See [`ConnectorFactory::visual_tokens`].
    pub fn visual_tokens(&self, env: &ConnectorEnv) -> Result<usize, SettingsError> {
        self.inner.visual_tokens(env).map_err(|e| self.locate(e))
    }

    /// Builds the connector under `vb`; a setting refused while building is
    /// located like the other checks' errors.
    pub fn build(
        &self,
        env: &ConnectorEnv,
        vb: VarBuilder,
    ) -> Result<Box<dyn Connector>, ConnectorBuildError> {
        self.inner.build(env, vb).map_err(|e| match e {
            BuildError::Config(e) => ConnectorBuildError::Setting(self.locate(e)),
            BuildError::Candle(e) => ConnectorBuildError::Candle(e),
        })
    }

    /// See [`ConnectorFactory::param_groups`].
    pub fn param_groups(&self) -> Vec<ParamGroup> {
        self.inner.param_groups()
    }
}

/// Why a recipe's connector could not be built: a setting (located at its recipe
/// key) or a tensor error.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorBuildError {
    #[error(transparent)]
    Setting(SettingsError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<ConnectorBuildError> for candle_core::Error {
    fn from(error: ConnectorBuildError) -> Self {
        match error {
            ConnectorBuildError::Candle(e) => e,
            other => candle_core::Error::Msg(other.to_string()),
        }
    }
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
    pub factory: Arc<dyn DynConnectorFactory>,
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
        factory: Arc<dyn DynConnectorFactory>,
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
