//! Typed recipe sections.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

/// `[run]`: what the run is called, where it writes, and on what it runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunConfig {
    /// Run name; defaults to the recipe file stem.
    pub name: String,
    pub seed: u64,
    /// Resolved against the directory of the recipe file that set it.
    pub output_dir: PathBuf,
    /// `"auto"`, `"cpu"`, `"cuda"` or `"cuda:N"`.
    pub device: String,
    /// `"f32"`, `"bf16"` or `"f16"`.
    pub dtype: String,
    /// Worker threads; 0 means all cores.
    pub threads: usize,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    pub log_every: u64,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            seed: 0,
            output_dir: PathBuf::from("runs"),
            device: "cpu".into(),
            dtype: "f32".into(),
            threads: 0,
            checkpoint_every: 500,
            keep_checkpoints: 2,
            log_every: 10,
        }
    }
}

/// `[run]` as written: paths and the name still unresolved.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRun {
    pub name: Option<String>,
    #[serde(default)]
    pub seed: u64,
    #[allow(dead_code)] // Type-checked here, resolved through `Recipe::path_value`.
    pub output_dir: Option<String>,
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default = "default_dtype")]
    pub dtype: String,
    #[serde(default)]
    pub threads: usize,
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    #[serde(default = "default_keep_checkpoints")]
    pub keep_checkpoints: usize,
    #[serde(default = "default_log_every")]
    pub log_every: u64,
}

fn default_device() -> String {
    RunConfig::default().device
}
fn default_dtype() -> String {
    RunConfig::default().dtype
}
fn default_checkpoint_every() -> u64 {
    RunConfig::default().checkpoint_every
}
fn default_keep_checkpoints() -> usize {
    RunConfig::default().keep_checkpoints
}
fn default_log_every() -> u64 {
    RunConfig::default().log_every
}

/// Learning-rate schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    #[default]
    Cosine,
    Linear,
    Constant,
}

/// One `[[stage]]`: what trains, for how long, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    pub name: String,
    /// Component names whose parameters train in this stage (non-empty).
    pub trainable: Vec<String>,
    /// Exactly one of `steps` and `epochs` is set.
    #[serde(default)]
    pub steps: Option<u64>,
    #[serde(default)]
    pub epochs: Option<f64>,
    pub lr: f64,
    /// Peak learning rates for parts of the model, by `trainable`-style
    /// pattern (`llm = 2e-5`); a parameter takes its most specific matching
    /// pattern's, else `lr`. The schedule scales them all alike.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub part_lr: BTreeMap<String, f64>,
    pub batch_size: usize,
    #[serde(default = "one")]
    pub grad_accum: usize,
    #[serde(default)]
    pub warmup_ratio: f64,
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default)]
    pub min_lr_ratio: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// Gradient-norm clip; written as a number where 0 disables clipping.
    #[serde(
        default = "default_clip_norm",
        deserialize_with = "clip_norm_from_number"
    )]
    pub clip_norm: Option<f64>,
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Loss name → weight.
    #[serde(default = "default_losses")]
    pub losses: BTreeMap<String, f64>,
    /// Per-stage keys merged over `[data.train]` (see `Recipe::stage_data`).
    #[serde(default)]
    pub data: Option<toml::Table>,
    /// The chat template this stage trains with, instead of `llm.chat_template`
    /// (LLaVA pretrains with `plain` and fine-tunes with `vicuna_v1`).
    #[serde(default)]
    pub chat_template: Option<String>,
    /// How this stage's images reach the encoder's square, as LLaVA's
    /// `image_aspect_ratio`: `"square"` (the image processor as it is: CLIP
    /// resizes the short side and crops the centre) or `"pad"` (first onto a
    /// square of the mean colour, as LLaVA-1.5 fine-tunes). Evaluation and
    /// inference use the last stage's.
    #[serde(default)]
    pub image_aspect_ratio: Option<String>,
}

impl StageConfig {
    /// `1e-3`, or `1e-3 (llm 2e-5)` with per-part rates.
    pub fn lr_summary(&self) -> String {
        let mut out = format!("{:e}", self.lr);
        if !self.part_lr.is_empty() {
            let parts: Vec<String> = self
                .part_lr
                .iter()
                .map(|(pattern, lr)| format!("{pattern} {lr:e}"))
                .collect();
            out += &format!(" ({})", parts.join(", "));
        }
        out
    }
}

fn one() -> usize {
    1
}
fn default_clip_norm() -> Option<f64> {
    Some(1.0)
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}
fn default_losses() -> BTreeMap<String, f64> {
    BTreeMap::from([("lm".to_string(), 1.0)])
}

fn clip_norm_from_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let v = f64::deserialize(d)?;
    Ok((v != 0.0).then_some(v))
}

/// `[eval]`: evaluation batch and generation limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Evaluate on this many samples (all when absent).
    #[serde(default)]
    pub samples: Option<u64>,
    /// Published benchmarks answered and scored beside the eval split
    /// (`vlmkit compare` and `sweep` report them as columns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub benchmarks: Vec<EvalBenchmark>,
}

/// One `[[eval.benchmarks]]` entry: a benchmark's files, as `vlmkit eval
/// --benchmark` takes them. Paths are resolved against the recipe file that
/// sets them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalBenchmark {
    /// `gqa`, `pope`, … (`vlmkit score`'s names).
    pub name: String,
    /// Its question file in LLaVA's format.
    pub questions: PathBuf,
    /// Where the question file's image paths start (default: its directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<PathBuf>,
    /// Its release files, as `vlmkit score --annotations` takes them.
    pub annotations: PathBuf,
    #[serde(default)]
    pub convention: vlmkit_benchmarks::Convention,
}

fn default_eval_batch() -> usize {
    64
}
fn default_max_new_tokens() -> usize {
    32
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            batch_size: default_eval_batch(),
            max_new_tokens: default_max_new_tokens(),
            samples: None,
            benchmarks: Vec::new(),
        }
    }
}

/// `[plugins]`: where to look for plugins and their expected hashes.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct PluginsConfig {
    /// Resolved against the directory of the recipe file that set them.
    pub paths: Vec<PathBuf>,
    /// Plugin name → expected sha256 (hex).
    pub sha256: BTreeMap<String, String>,
}

/// `[plugins]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPlugins {
    #[allow(dead_code)] // Type-checked here, resolved through `Recipe::path_value`.
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub sha256: BTreeMap<String, String>,
}
