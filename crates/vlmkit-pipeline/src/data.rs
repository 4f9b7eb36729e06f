//! Data sources named by `[data.train]` / `[data.eval]`: the built-in shapes world
//! or LLaVA conversation JSON, behind one trait.

use std::collections::BTreeSet;
use std::path::PathBuf;

use vlmkit_data::shapes::{vocabulary, ShapesConfig, ShapesDataset, Split};
use vlmkit_data::{DataError, Example, LlavaDataset};
use vlmkit_recipe::{Recipe, RecipeError, Settings, SettingsError};

/// Something that yields examples by index.
pub trait ExampleSource: Send + Sync {
    /// Number of examples in one epoch.
    fn len(&self) -> u64;
    fn get(&self, index: u64) -> Result<Example, DataError>;
    /// A short description for logs ("shapes/train (100000)").
    fn describe(&self) -> String;
    /// Where its examples come from, as a skip list names it (a file's path).
    fn origin(&self) -> String;
    /// Indices a check at open found unusable (they fail [`ExampleSource::get`]).
    fn unusable(&self) -> &[u64] {
        &[]
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ExampleSource for ShapesDataset {
    fn len(&self) -> u64 {
        ShapesDataset::len(self)
    }

    fn get(&self, index: u64) -> Result<Example, DataError> {
        Ok(ShapesDataset::get(self, index).to_example())
    }

    fn describe(&self) -> String {
        format!(
            "shapes/{} ({} samples)",
            self.split(),
            ShapesDataset::len(self)
        )
    }

    fn origin(&self) -> String {
        format!("shapes/{}", self.split())
    }
}

impl ExampleSource for LlavaDataset {
    fn len(&self) -> u64 {
        LlavaDataset::len(self) as u64
    }

    fn get(&self, index: u64) -> Result<Example, DataError> {
        LlavaDataset::get(self, index as usize)
    }

    fn describe(&self) -> String {
        format!(
            "llava {} ({} records)",
            self.json_path().display(),
            LlavaDataset::len(self)
        )
    }

    fn origin(&self) -> String {
        self.json_path().display().to_string()
    }

    fn unusable(&self) -> &[u64] {
        LlavaDataset::unusable(self)
    }
}

/// The built-in data with every image replaced by its scene's description as
/// text ([`vlmkit_data::shapes::Sample::to_scene_text_example`]).
pub struct ScenesAsText(pub ShapesDataset);

impl ExampleSource for ScenesAsText {
    fn len(&self) -> u64 {
        self.0.len()
    }

    fn get(&self, index: u64) -> Result<Example, DataError> {
        Ok(self.0.get(index).to_scene_text_example())
    }

    fn describe(&self) -> String {
        format!("{}, scenes as text", ExampleSource::describe(&self.0))
    }

    fn origin(&self) -> String {
        ExampleSource::origin(&self.0)
    }
}

/// A parsed data section.
#[derive(Debug, Clone, PartialEq)]
pub enum DataSpec {
    Shapes {
        config: ShapesConfig,
        split: Split,
    },
    Llava {
        json: PathBuf,
        images: Option<PathBuf>,
        /// The share of examples read that may be skipped for a missing or
        /// corrupt image before training stops.
        max_skipped: f64,
    },
}

/// Data kinds this build knows.
pub const DATA_KINDS: &[&str] = &["shapes", "llava"];

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LlavaSettings {
    json: String,
    #[serde(default)]
    images: Option<String>,
    #[serde(default = "default_max_skipped")]
    max_skipped: f64,
}

/// Up to 1% of a large dataset's images may be missing or broken.
fn default_max_skipped() -> f64 {
    0.01
}

impl DataSpec {
    /// Parses `settings` (a `[data.*]` table); `split` says which shapes split it
    /// reads. `path_of(key, raw)` resolves a path value relative to the file that
    /// set it.
    pub fn from_settings(
        settings: &Settings,
        split: Split,
        path_of: &dyn Fn(&str, &str) -> PathBuf,
    ) -> Result<Self, SettingsError> {
        let kind = settings
            .get_str("kind")?
            .ok_or_else(|| settings.error("kind", "missing: \"shapes\" or \"llava\""))?;
        match kind {
            "shapes" => {
                let config: ShapesConfig = settings.without(&["kind"]).parse()?;
                config.validate().map_err(|e| shapes_error(settings, e))?;
                Ok(Self::Shapes { config, split })
            }
            "llava" => {
                let cfg: LlavaSettings = settings.without(&["kind"]).parse()?;
                if !(0.0..1.0).contains(&cfg.max_skipped) {
                    return Err(settings.error(
                        "max_skipped",
                        format!(
                            "{}: a share of the examples read, at least 0 and below 1",
                            cfg.max_skipped
                        ),
                    ));
                }
                Ok(Self::Llava {
                    json: path_of("json", &cfg.json),
                    images: cfg.images.as_deref().map(|raw| path_of("images", raw)),
                    max_skipped: cfg.max_skipped,
                })
            }
            other => Err(settings.error(
                "kind",
                format!(
                    "unknown data kind `{other}` (known: {})",
                    DATA_KINDS.join(", ")
                ),
            )),
        }
    }

    /// The share of examples read that may be skipped for a bad image (none for
    /// generated data, which has no files to lose).
    pub fn max_skipped(&self) -> f64 {
        match self {
            Self::Shapes { .. } => 0.0,
            Self::Llava { max_skipped, .. } => *max_skipped,
        }
    }

    /// Opens the source. LLaVA files are read and checked here.
    pub fn open(&self) -> Result<Box<dyn ExampleSource>, DataError> {
        Ok(match self {
            Self::Shapes { config, split } => Box::new(ShapesDataset::new(config.clone(), *split)?),
            Self::Llava { json, images, .. } => Box::new(LlavaDataset::open(json, images.clone())?),
        })
    }

    /// Opens the built-in data with scenes as text ([`ScenesAsText`]); `None` for
    /// data whose images have no description.
    pub fn open_scenes_as_text(&self) -> Result<Option<ScenesAsText>, DataError> {
        Ok(match self {
            Self::Shapes { config, split } => {
                Some(ScenesAsText(ShapesDataset::new(config.clone(), *split)?))
            }
            Self::Llava { .. } => None,
        })
    }

    /// Every word the source's text can contain (for the built-in word-level
    /// tokenizer), in a stable order.
    pub fn vocabulary(&self) -> Result<Vec<String>, DataError> {
        match self {
            Self::Shapes { config, .. } => Ok(vocabulary(config)),
            Self::Llava { json, images, .. } => {
                let mut words = BTreeSet::new();
                LlavaDataset::open_visiting(json, images.clone(), |record| {
                    for turn in &record.conversations {
                        words.extend(vlmkit_data::shapes::split_words(&turn.value));
                    }
                })?;
                words.remove(vlmkit_data::IMAGE_TOKEN);
                Ok(words.into_iter().collect())
            }
        }
    }
}

fn shapes_error(settings: &Settings, err: vlmkit_data::shapes::ShapesConfigError) -> SettingsError {
    use vlmkit_data::shapes::ShapesConfigError as E;
    let field = match &err {
        E::UnknownName { field, .. } | E::Invalid { field, .. } => *field,
    };
    settings.error(field, err.to_string())
}

/// The eval data: `[data.eval]` over `[data.train]` when both are shapes (so the
/// eval split draws from the same world), else `[data.eval]` alone.
pub fn eval_settings(recipe: &Recipe) -> Settings {
    let train = recipe.data_section("train");
    let eval = recipe.data_section("eval");
    if train.get_str("kind").ok().flatten() == Some("shapes")
        && eval.get_str("kind").ok().flatten() == Some("shapes")
    {
        let mut table = train.table().clone();
        // The eval split asks every scored family unless it says otherwise.
        table.remove("families");
        table.remove("samples");
        for (k, v) in eval.table() {
            table.insert(k.clone(), v.clone());
        }
        Settings::new("data.eval", table)
    } else {
        eval
    }
}

/// Parses and opens the training data of stage `stage` (with its overrides).
pub fn train_spec(recipe: &Recipe, stage: usize) -> Result<DataSpec, RecipeError> {
    // A stage's own `data` table wins over `[data.train]`, and its paths are
    // relative to the file that wrote them.
    let path_of = |key: &str, raw: &str| {
        let stage_key = format!("stage.{stage}.data.{key}");
        let key = if recipe.value(&stage_key).is_some() {
            stage_key
        } else {
            format!("data.train.{key}")
        };
        recipe
            .path_value(&key)
            .unwrap_or_else(|| PathBuf::from(raw))
    };
    DataSpec::from_settings(&recipe.stage_data(stage), Split::Train, &path_of)
        .map_err(|e| recipe.error_for(e))
}

/// Parses the eval data section.
pub fn eval_spec(recipe: &Recipe) -> Result<DataSpec, RecipeError> {
    let path_of = |key: &str, raw: &str| {
        recipe
            .path_value(&format!("data.eval.{key}"))
            .unwrap_or_else(|| PathBuf::from(raw))
    };
    DataSpec::from_settings(&eval_settings(recipe), Split::Eval, &path_of)
        .map_err(|e| recipe.error_for(e))
}
