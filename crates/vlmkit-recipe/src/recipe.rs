//! The loaded, merged and validated recipe.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use crate::error::{Origin, RecipeError, RecipeErrorKind};
use crate::keys;
use crate::loader::{self, Layer, Origins};
use crate::schema::{EvalConfig, PluginsConfig, RawPlugins, RawRun, RunConfig, StageConfig};
use crate::settings::{Settings, SettingsError};

/// Top-level keys a merged recipe may hold (`extends` is gone by then).
const TOP_LEVEL_KEYS: &[&str] = &[
    "connector",
    "data",
    "eval",
    "llm",
    "plugins",
    "run",
    "stage",
    "vision",
];

/// Sections handed to component factories; each must name its `kind`.
const COMPONENT_SECTIONS: &[&str] = &["vision", "llm", "connector"];

/// Data splits under `[data]`; each must name its `kind`.
const DATA_SPLITS: &[&str] = &["eval", "train"];

/// The largest batch (examples per micro-batch, micro-batches per step, or
/// questions per generation batch) a recipe may ask for; memory bounds it well
/// below on any machine, checked before training.
pub const MAX_BATCH: usize = 65536;

/// A recipe: the merged TOML, where each key came from, and the typed sections.
#[derive(Debug, Clone)]
pub struct Recipe {
    path: PathBuf,
    table: Table,
    origins: Origins,
    /// `[run]`, with defaults filled in and `output_dir` resolved.
    pub run: RunConfig,
    /// The `[[stage]]`s in order (at least one).
    pub stages: Vec<StageConfig>,
    /// `[eval]`, defaults when absent.
    pub eval: EvalConfig,
    /// `[plugins]`, with `paths` resolved; empty when absent.
    pub plugins: PluginsConfig,
}

/// Equal when the resolved contents are; where keys were written does not matter.
impl PartialEq for Recipe {
    fn eq(&self, other: &Self) -> bool {
        self.table == other.table
            && self.run == other.run
            && self.stages == other.stages
            && self.eval == other.eval
            && self.plugins == other.plugins
    }
}

impl Recipe {
    /// Load the recipe at `path` (shown in messages as given), resolving `extends`
    /// and then applying `--set key=value` `overrides` in order.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Recipe, RecipeError> {
        let mut layer = loader::load_tree(path)?;
        for raw in overrides {
            loader::apply_override(&mut layer, raw)?;
        }
        Self::build(path, layer)
    }

    /// Load a resolved recipe as printed by [`Recipe::to_toml_string`]. `display_path`
    /// names it in messages, gives the default run name, and anchors relative paths.
    pub fn from_resolved_str(text: &str, display_path: &Path) -> Result<Recipe, RecipeError> {
        Self::from_resolved_str_with(text, display_path, &[])
    }

    /// As [`Recipe::from_resolved_str`], then applies `--set` `overrides` (e.g. to
    /// evaluate a checkpoint on other data).
    pub fn from_resolved_str_with(
        text: &str,
        display_path: &Path,
        overrides: &[String],
    ) -> Result<Recipe, RecipeError> {
        let mut layer = loader::parse_text(display_path, text)?;
        for raw in overrides {
            loader::apply_override(&mut layer, raw)?;
        }
        if layer.table.contains_key("extends") {
            return Err(RecipeError::new(
                RecipeErrorKind::Extends,
                "a resolved recipe cannot use `extends`",
            )
            .with_key("extends")
            .with_origin(layer.origins.get("extends").cloned()));
        }
        Self::build(display_path, layer)
    }

    fn build(path: &Path, layer: Layer) -> Result<Recipe, RecipeError> {
        let mut recipe = Recipe {
            path: path.to_path_buf(),
            table: layer.table,
            origins: layer.origins,
            run: RunConfig::default(),
            stages: Vec::new(),
            eval: EvalConfig::default(),
            plugins: PluginsConfig::default(),
        };
        recipe.check_top_level()?;
        recipe.run = recipe.parse_run()?;
        recipe.record_default_name();
        for name in COMPONENT_SECTIONS {
            recipe.check_kind_section(name)?;
        }
        recipe.check_data()?;
        recipe.stages = recipe.parse_stages()?;
        recipe.eval = recipe.optional_section("eval")?.map_or_else(
            || Ok(EvalConfig::default()),
            |s| s.parse().map_err(|e| recipe.error_for(e)),
        )?;
        recipe.resolve_benchmark_paths();
        recipe.check_eval()?;
        recipe.plugins = recipe.parse_plugins()?;
        Ok(recipe)
    }

    /// The recipe file as the caller named it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The merged recipe, overrides applied, `extends` removed.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The value at a dotted key path (`stage.0.lr` or `stage[0].lr`).
    pub fn value(&self, key: &str) -> Option<&Value> {
        keys::get(&self.table, &keys::parse(key).ok()?)
    }

    /// Where every key with a known origin was defined, by dotted key path.
    pub fn origins(&self) -> &BTreeMap<String, Origin> {
        &self.origins
    }

    /// The origin of `key`, or of its nearest ancestor that has one.
    pub fn locate(&self, key: &str) -> Option<&Origin> {
        let normalized = keys::normalize(key);
        let mut key = normalized.as_str();
        loop {
            if let Some(origin) = self.origins.get(key) {
                return Some(origin);
            }
            if key.is_empty() {
                return None;
            }
            key = keys::parent(key);
        }
    }

    /// A located error about `key`.
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> RecipeError {
        let key = keys::normalize(key);
        RecipeError::new(RecipeErrorKind::Invalid, message)
            .with_origin(self.locate(&key).cloned())
            .with_key(key)
    }

    /// Turn a component's [`SettingsError`] into a located error, rewording serde's
    /// messages and moving its "expected one of" list into the help line.
    pub fn error_for(&self, err: SettingsError) -> RecipeError {
        let key = keys::normalize(&err.key);
        let (message, help) = describe(&key, &err.message);
        let located = self.error_at(&key, message);
        match help {
            Some(help) => located.with_help(help),
            None => located,
        }
    }

    /// A component section (`"vision"`, `"llm"`, `"connector"`, or any other table)
    /// for its factory; empty if absent.
    pub fn section(&self, name: &str) -> Settings {
        match self.value(name) {
            Some(Value::Table(t)) => Settings::new(keys::normalize(name), t.clone()),
            _ => Settings::empty(keys::normalize(name)),
        }
    }

    /// A data split (`"train"` or `"eval"`) from `[data]`.
    pub fn data_section(&self, split: &str) -> Settings {
        self.section(&format!("data.{split}"))
    }

    /// `[data.train]` with stage `index`'s `data` table merged over it (tables
    /// merge key by key, other values replace). Empty if there is no such stage.
    pub fn stage_data(&self, index: usize) -> Settings {
        let mut layer = Layer {
            table: self.data_section("train").table().clone(),
            origins: Origins::new(),
        };
        if let Some(extra) = self.stages.get(index).and_then(|s| s.data.clone()) {
            loader::merge(
                &mut layer,
                Layer {
                    table: extra,
                    origins: Origins::new(),
                },
            );
        }
        Settings::new("data.train", layer.table)
    }

    /// A string value at `key` as a path, resolved against the directory of the
    /// recipe file that set it (`--set` values: the current directory). `None` if
    /// the key is unset or not a string.
    pub fn path_value(&self, key: &str) -> Option<PathBuf> {
        let Value::String(raw) = self.value(key)? else {
            return None;
        };
        let raw = Path::new(raw);
        let base = self.locate(key).and_then(Origin::base_dir);
        Some(match base {
            Some(dir) if raw.is_relative() => dir.join(raw),
            _ => raw.to_path_buf(),
        })
    }

    /// The resolved recipe as TOML: merged, overrides applied, `extends` removed,
    /// relative paths as written, the default run name filled in.
    pub fn to_toml_string(&self) -> String {
        // Every toml::Table is representable as a TOML document.
        toml::to_string_pretty(&self.table).expect("a TOML table always serialises")
    }

    /// As [`Recipe::to_toml_string`], with the relative paths at `path_keys`
    /// written as absolute ones (resolved as [`Recipe::path_value`] does, against
    /// the current directory where the recipe file's own is relative). A copy
    /// kept elsewhere — a run directory's `recipe.toml` — then still names the
    /// same files. Keys that are unset or hold no string are left alone.
    /// `dropped` keys (`section.key`) are left out: settings a checkpoint overrode.
    pub fn to_toml_string_anchored<'a>(
        &self,
        path_keys: impl IntoIterator<Item = &'a str>,
        dropped: impl IntoIterator<Item = &'a str>,
    ) -> String {
        let mut table = self.table.clone();
        let dropped: Vec<&str> = dropped.into_iter().collect();
        for key in &dropped {
            if let Some((section, name)) = key.split_once('.') {
                if let Some(Value::Table(t)) = table.get_mut(section) {
                    t.remove(name);
                }
            }
        }
        let mut root = Value::Table(table);
        for key in path_keys.into_iter().filter(|k| !dropped.contains(k)) {
            let (Some(path), Ok(segments)) = (self.path_value(key), keys::parse(key)) else {
                continue;
            };
            let absolute = std::path::absolute(&path).unwrap_or(path);
            let value = Value::String(absolute.display().to_string());
            // `key` holds a string (path_value said so), so every parent exists.
            loader::set_path(&mut root, &segments, value).expect("an existing key can be set");
        }
        let Value::Table(table) = root else {
            unreachable!("the root stays a table")
        };
        toml::to_string_pretty(&table).expect("a TOML table always serialises")
    }

    fn check_top_level(&self) -> Result<(), RecipeError> {
        match self
            .table
            .keys()
            .find(|k| !TOP_LEVEL_KEYS.contains(&k.as_str()))
        {
            Some(unknown) => Err(self
                .error_at(unknown, format!("unknown top-level key `{unknown}`"))
                .with_help(format!("known keys: {}", TOP_LEVEL_KEYS.join(", ")))),
            None => Ok(()),
        }
    }

    /// The table at `key` as a section, `None` if absent, an error if not a table.
    fn optional_section(&self, key: &str) -> Result<Option<Settings>, RecipeError> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::Table(t)) => Ok(Some(Settings::new(key, t.clone()))),
            Some(other) => Err(self.error_at(
                key,
                format!("`{key}` must be a table, found {}", other.type_str()),
            )),
        }
    }

    fn required_section(&self, key: &str, help: &str) -> Result<Settings, RecipeError> {
        self.optional_section(key)?.ok_or_else(|| {
            let parent = keys::parent(key);
            let origin = match self.locate(parent) {
                Some(o) if !parent.is_empty() => o.clone(),
                _ => Origin::File(self.path.clone()),
            };
            RecipeError::new(RecipeErrorKind::Invalid, format!("missing section [{key}]"))
                .with_key(key)
                .with_origin(Some(origin))
                .with_help(help)
        })
    }

    /// A section that selects its implementation with a string `kind`.
    fn check_kind(&self, section: &Settings) -> Result<(), RecipeError> {
        match section.get_str("kind").map_err(|e| self.error_for(e))? {
            Some(_) => Ok(()),
            None => Err(self
                .error_at(
                    section.path(),
                    format!("missing `kind` in [{}]", section.path()),
                )
                .with_help(format!(
                    "set `kind = \"...\"` in [{}] to choose its implementation",
                    section.path()
                ))),
        }
    }

    fn check_kind_section(&self, name: &str) -> Result<(), RecipeError> {
        let help = format!("add a [{name}] table with a `kind`");
        self.check_kind(&self.required_section(name, &help)?)
    }

    fn check_data(&self) -> Result<(), RecipeError> {
        let data = self.required_section(
            "data",
            "add [data.train] and [data.eval] tables, each with a `kind`",
        )?;
        if let Some(unknown) = data
            .table()
            .keys()
            .find(|k| !DATA_SPLITS.contains(&k.as_str()))
        {
            return Err(self
                .error_at(
                    &data.key(unknown),
                    format!("unknown key `{unknown}` in [data]"),
                )
                .with_help(format!("known keys: {}", DATA_SPLITS.join(", "))));
        }
        for split in ["train", "eval"] {
            let key = data.key(split);
            let help = format!("add a [{key}] table with a `kind` (e.g. \"shapes\" or \"llava\")");
            self.check_kind(&self.required_section(&key, &help)?)?;
        }
        Ok(())
    }

    /// `[eval]`'s sizes: a generation batch and an answer of at least one.
    /// `[[eval.benchmarks]]` paths, against the recipe file that set each.
    fn resolve_benchmark_paths(&mut self) {
        for i in 0..self.eval.benchmarks.len() {
            let key = |name: &str| format!("eval.benchmarks.{i}.{name}");
            if let Some(path) = self.path_value(&key("questions")) {
                self.eval.benchmarks[i].questions = path;
            }
            if let Some(path) = self.path_value(&key("annotations")) {
                self.eval.benchmarks[i].annotations = path;
            }
            if let Some(path) = self.path_value(&key("images")) {
                self.eval.benchmarks[i].images = Some(path);
            }
        }
    }

    fn check_eval(&self) -> Result<(), RecipeError> {
        let registry = vlmkit_benchmarks::BenchmarkRegistry::default();
        for (i, benchmark) in self.eval.benchmarks.iter().enumerate() {
            let key = |name: &str| format!("eval.benchmarks.{i}.{name}");
            if registry.get(&benchmark.name).is_none() {
                return Err(self
                    .error_at(
                        &key("name"),
                        format!("unknown benchmark `{}`", benchmark.name),
                    )
                    .with_help(format!(
                        "known: {}",
                        registry.names().collect::<Vec<_>>().join(", ")
                    )));
            }
            if self.eval.benchmarks[..i]
                .iter()
                .any(|b| b.name == benchmark.name)
            {
                return Err(self.error_at(
                    &key("name"),
                    format!("`{}` is listed twice", benchmark.name),
                ));
            }
            for (name, path) in [
                ("questions", Some(&benchmark.questions)),
                ("annotations", Some(&benchmark.annotations)),
                ("images", benchmark.images.as_ref()),
            ] {
                if let Some(path) = path.filter(|p| !p.exists()) {
                    return Err(
                        self.error_at(&key(name), format!("{} does not exist", path.display()))
                    );
                }
            }
        }
        if !(1..=MAX_BATCH).contains(&self.eval.batch_size) {
            return Err(self.error_at(
                "eval.batch_size",
                format!("must be 1 to {MAX_BATCH}, found {}", self.eval.batch_size),
            ));
        }
        if self.eval.max_new_tokens == 0 {
            return Err(self.error_at(
                "eval.max_new_tokens",
                "must be at least 1: with 0 every answer is empty and scores 0%",
            ));
        }
        Ok(())
    }

    fn parse_run(&self) -> Result<RunConfig, RecipeError> {
        let raw: RawRun = self
            .optional_section("run")?
            .unwrap_or_else(|| Settings::empty("run"))
            .parse()
            .map_err(|e| self.error_for(e))?;
        if !valid_device(&raw.device) {
            return Err(self
                .error_at("run.device", format!("unknown device `{}`", raw.device))
                .with_help("expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\""));
        }
        if !["f32", "bf16", "f16"].contains(&raw.dtype.as_str()) {
            return Err(self
                .error_at("run.dtype", format!("unknown dtype `{}`", raw.dtype))
                .with_help("expected \"f32\", \"bf16\" or \"f16\""));
        }
        // Worker threads are spawned per step: far more than any machine has cores
        // aborts the process instead of training.
        const MAX_THREADS: usize = 256;
        let ranges: [(&str, bool, String); 4] = [
            (
                "threads",
                raw.threads <= MAX_THREADS,
                format!(
                    "{}: at most {MAX_THREADS} worker threads (0 means one per core)",
                    raw.threads
                ),
            ),
            (
                "checkpoint_every",
                raw.checkpoint_every >= 1,
                "must be at least 1 (steps between checkpoints)".into(),
            ),
            (
                "keep_checkpoints",
                raw.keep_checkpoints >= 1,
                "must be at least 1: the newest checkpoint is what a run resumes from".into(),
            ),
            (
                "log_every",
                raw.log_every >= 1,
                "must be at least 1 (steps per line of metrics.jsonl)".into(),
            ),
        ];
        if let Some((key, _, message)) = ranges.into_iter().find(|(_, ok, _)| !ok) {
            return Err(self.error_at(&format!("run.{key}"), message));
        }
        let name = match raw.name {
            Some(name) if name.trim().is_empty() => {
                return Err(self.error_at("run.name", "the run name must not be empty"))
            }
            Some(name) => name,
            None => self
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into()),
        };
        Ok(RunConfig {
            name,
            seed: raw.seed,
            output_dir: self
                .path_value("run.output_dir")
                .unwrap_or_else(|| RunConfig::default().output_dir),
            device: raw.device,
            dtype: raw.dtype,
            threads: raw.threads,
            checkpoint_every: raw.checkpoint_every,
            keep_checkpoints: raw.keep_checkpoints,
            log_every: raw.log_every,
        })
    }

    /// Write the file-stem default into the table, so that the resolved recipe keeps
    /// its name when saved under another file name.
    fn record_default_name(&mut self) {
        let run = self
            .table
            .entry("run")
            .or_insert_with(|| Value::Table(Table::new()));
        // `parse_run` has already rejected a `run` that is not a table.
        let Value::Table(run) = run else {
            return;
        };
        if !run.contains_key("name") {
            run.insert("name".into(), Value::String(self.run.name.clone()));
            self.origins
                .insert("run.name".into(), Origin::File(self.path.clone()));
        }
    }

    fn parse_stages(&self) -> Result<Vec<StageConfig>, RecipeError> {
        let help = "add at least one [[stage]] with `name`, `trainable`, `steps` or `epochs`, `lr` and `batch_size`";
        let items = match self.table.get("stage") {
            None => {
                return Err(RecipeError::new(
                    RecipeErrorKind::Invalid,
                    "the recipe has no [[stage]]",
                )
                .with_key("stage")
                .with_origin(Some(Origin::File(self.path.clone())))
                .with_help(help))
            }
            Some(Value::Array(items)) if !items.is_empty() => items,
            Some(Value::Array(_)) => {
                return Err(self
                    .error_at("stage", "at least one [[stage]] is required")
                    .with_help(help))
            }
            Some(other) => {
                return Err(self
                    .error_at(
                        "stage",
                        format!(
                            "`stage` must be an array of tables, found {}",
                            other.type_str()
                        ),
                    )
                    .with_help("write each stage as a [[stage]] table (double brackets)"))
            }
        };
        let mut stages: Vec<StageConfig> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let key = format!("stage.{i}");
            let Value::Table(t) = item else {
                return Err(self.error_at(
                    &key,
                    format!("each stage must be a table, found {}", item.type_str()),
                ));
            };
            let stage: StageConfig = Settings::new(key.clone(), t.clone())
                .parse()
                .map_err(|e| self.error_for(e))?;
            self.check_stage(&key, &stage)?;
            if let Some(first) = stages.iter().position(|s| s.name == stage.name) {
                let mut err = self.error_at(
                    &format!("{key}.name"),
                    format!("duplicate stage name `{}`", stage.name),
                );
                if let Some(origin) = self.locate(&format!("stage.{first}.name")) {
                    err = err.with_help(format!("first used at {origin}"));
                }
                return Err(err);
            }
            stages.push(stage);
        }
        Ok(stages)
    }

    fn check_stage(&self, key: &str, s: &StageConfig) -> Result<(), RecipeError> {
        let at = |field: &str, message: String| self.error_at(&format!("{key}.{field}"), message);
        let label = format!("stage `{}`", s.name);
        if s.name.trim().is_empty() {
            return Err(at("name", "the stage name must not be empty".into()));
        }
        if s.trainable.is_empty() {
            return Err(at(
                "trainable",
                format!("{label}: `trainable` must name at least one component"),
            )
            .with_help("e.g. trainable = [\"connector\"]"));
        }
        match (s.steps, s.epochs) {
            (None, None) => {
                return Err(self
                    .error_at(key, format!("{label} sets neither `steps` nor `epochs`"))
                    .with_help("set exactly one of `steps = N` or `epochs = N`"))
            }
            (Some(_), Some(_)) => {
                return Err(
                    at("epochs", format!("{label} sets both `steps` and `epochs`"))
                        .with_help("set exactly one of `steps = N` or `epochs = N`"),
                )
            }
            (Some(0), None) => {
                return Err(at("steps", format!("{label}: `steps` must be at least 1")))
            }
            (None, Some(e)) if !(e.is_finite() && e > 0.0) => {
                return Err(at(
                    "epochs",
                    format!("{label}: `epochs` must be a positive number, found {e}"),
                ))
            }
            _ => {}
        }
        let checks: [(&str, bool, String); 9] = [
            (
                "lr",
                s.lr.is_finite() && s.lr > 0.0,
                format!("`lr` must be positive and finite, found {}", s.lr),
            ),
            (
                "batch_size",
                (1..=MAX_BATCH).contains(&s.batch_size),
                format!(
                    "`batch_size` must be 1 to {MAX_BATCH}, found {}",
                    s.batch_size
                ),
            ),
            (
                "grad_accum",
                (1..=MAX_BATCH).contains(&s.grad_accum),
                format!(
                    "`grad_accum` must be 1 to {MAX_BATCH}, found {}",
                    s.grad_accum
                ),
            ),
            (
                "warmup_ratio",
                (0.0..1.0).contains(&s.warmup_ratio),
                format!("`warmup_ratio` must be in [0, 1), found {}", s.warmup_ratio),
            ),
            (
                "min_lr_ratio",
                (0.0..=1.0).contains(&s.min_lr_ratio),
                format!("`min_lr_ratio` must be in [0, 1], found {}", s.min_lr_ratio),
            ),
            (
                "weight_decay",
                s.weight_decay.is_finite() && s.weight_decay >= 0.0,
                format!(
                    "`weight_decay` must be non-negative, found {}",
                    s.weight_decay
                ),
            ),
            (
                "clip_norm",
                s.clip_norm.is_none_or(|c| c.is_finite() && c > 0.0),
                "`clip_norm` must be positive (or 0 to disable clipping)".into(),
            ),
            (
                "betas",
                s.betas.iter().all(|b| (0.0..1.0).contains(b)),
                format!("`betas` must each be in [0, 1), found {:?}", s.betas),
            ),
            (
                "eps",
                s.eps.is_finite() && s.eps > 0.0,
                format!("`eps` must be positive, found {}", s.eps),
            ),
        ];
        if let Some((field, _, message)) = checks.into_iter().find(|(_, ok, _)| !ok) {
            return Err(at(field, format!("{label}: {message}")));
        }
        if let Some((pattern, lr)) = s
            .part_lr
            .iter()
            .find(|(_, lr)| !(lr.is_finite() && **lr > 0.0))
        {
            return Err(at(
                "part_lr",
                format!("{label}: the learning rate of `{pattern}` must be positive and finite, found {lr}"),
            ));
        }
        if let Some((loss, w)) = s
            .losses
            .iter()
            .find(|(_, w)| !(w.is_finite() && **w >= 0.0))
        {
            return Err(at(
                &format!("losses.{loss}"),
                format!("{label}: loss weight `{loss}` must be non-negative, found {w}"),
            ));
        }
        Ok(())
    }

    fn parse_plugins(&self) -> Result<PluginsConfig, RecipeError> {
        let Some(section) = self.optional_section("plugins")? else {
            return Ok(PluginsConfig::default());
        };
        let raw: RawPlugins = section.parse().map_err(|e| self.error_for(e))?;
        let paths = (0..raw.paths.len())
            .filter_map(|i| self.path_value(&format!("plugins.paths.{i}")))
            .collect();
        Ok(PluginsConfig {
            paths,
            sha256: raw.sha256,
        })
    }
}

fn valid_device(device: &str) -> bool {
    match device {
        "auto" | "cpu" | "cuda" => true,
        other => other
            .strip_prefix("cuda:")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
    }
}

/// Reword a serde message about `key` for people editing TOML, pulling serde's list
/// of accepted names out into a help line.
fn describe(key: &str, message: &str) -> (String, Option<String>) {
    let section = |k: &str| match k {
        "" => "at the top level".to_string(),
        k => format!("in [{k}]"),
    };
    if let Some((name, rest)) = backticked_after(message, "unknown field `") {
        let help = listed_names(rest).map(|names| format!("known keys: {}", names.join(", ")));
        return (
            format!("unknown key `{name}` {}", section(keys::parent(key))),
            help,
        );
    }
    if let Some((name, _)) = backticked_after(message, "missing field `") {
        return (format!("missing key `{name}` {}", section(key)), None);
    }
    if let Some((name, rest)) = backticked_after(message, "unknown variant `") {
        let help = listed_names(rest).map(|names| format!("possible values: {}", names.join(", ")));
        return (format!("unknown value `{name}` for `{key}`"), help);
    }
    for (prefix, what) in [
        ("invalid type: ", "wrong type for"),
        ("invalid value: ", "invalid value for"),
    ] {
        if let Some((found, expected)) = message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split_once(", expected "))
        {
            return (
                format!("{what} `{key}`: expected {expected}, found {found}"),
                None,
            );
        }
    }
    (format!("invalid `{key}`: {message}"), None)
}

/// For `message` starting with `prefix` followed by ``name` rest``: (name, rest).
fn backticked_after<'a>(message: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let rest = message.strip_prefix(prefix)?;
    let end = rest.find('`')?;
    Some((&rest[..end], &rest[end + 1..]))
}

/// The backticked names in serde's ", expected one of `a`, `b`" tail.
fn listed_names(tail: &str) -> Option<Vec<&str>> {
    let (_, list) = tail.split_once("expected")?;
    let names: Vec<&str> = list.split('`').skip(1).step_by(2).collect();
    (!names.is_empty()).then_some(names)
}
