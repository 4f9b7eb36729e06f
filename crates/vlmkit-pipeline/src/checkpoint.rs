//! Run directories and checkpoints.
//!
//! ```text
//! runs/<name>/
//!   recipe.toml            the resolved recipe the run was started with
//!   metrics.jsonl          one record per logged step
//!   loss.png               the loss curve (written at the end)
//!   checkpoints/latest     name of the newest complete checkpoint
//!   checkpoints/step-000500/{model,optimizer}.safetensors, state.json, recipe.toml, tokenizer.json
//!   final/                 model.safetensors, state.json, recipe.toml, tokenizer.json
//! ```
//!
//! A checkpoint directory is written under a temporary name, every file synced,
//! then renamed into place, and only then does `latest` (itself replaced
//! atomically) point at it: a crash at any moment leaves the previous checkpoint
//! intact and findable. Pruning renames a checkpoint out of the `step-*` names
//! before deleting it, so a crash mid-delete never leaves a `step-*` directory
//! that looks complete but is not. One process at a time trains in a run
//! directory ([`RunDir::lock`]); the lock holder removes the temporaries a killed
//! process left ([`RunDir::remove_leftovers`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use vlmkit_core::fsutil::{sync_dir, write_atomic};
use vlmkit_core::params::save_safetensors_atomic;

use crate::PipelineError;

/// Where training stood when a checkpoint was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps taken over the whole run.
    pub global_step: u64,
    /// Index of the stage in progress (or `stages.len()` when done).
    pub stage: usize,
    pub stage_name: String,
    /// Optimizer steps taken in this stage.
    pub stage_step: u64,
    /// Examples consumed by this stage (its data position).
    pub samples_seen: u64,
    /// State of the trainer's random generator.
    pub rng: [u64; 4],
    /// Lines of `metrics.jsonl` that belong to the run up to here.
    pub metrics_lines: u64,
    /// Examples skipped over the whole run (lines of `skipped.jsonl`).
    #[serde(default, alias = "skipped_images")]
    pub skipped: u64,
    /// Examples kept with their text cut to the model's length.
    #[serde(default)]
    pub truncated: u64,
    pub vlmkit_version: String,
    /// The pretrained parts (`vision`, `llm`) whose weights the checkpoint leaves
    /// out because no stage has trained them yet: they are read back from their
    /// source, which must be the one the run started from.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub frozen_sources: BTreeMap<String, FrozenSource>,
}

/// A pretrained part's source, as a checkpoint that leaves its weights out
/// records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrozenSource {
    /// Where the run read it from.
    pub path: PathBuf,
    /// [`source_fingerprint`] of it then.
    pub fingerprint: String,
}

/// Identifies a model source (a Hugging Face directory or a GGUF file) without
/// reading all of it: every weight file's name and size and its first and last
/// MiB, and `config.json`, hashed with SHA-256. Another download of the same
/// weights matches. A fine-tuned copy of the same shapes is caught when the
/// tensors at either end of a file changed, which a full fine-tune's do.
pub fn source_fingerprint(path: &Path) -> Result<String, PipelineError> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Seek, SeekFrom};
    const EDGE: u64 = 1 << 20;
    let mut files = Vec::new();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).map_err(io(path))? {
            let entry_path = entry.map_err(io(path))?.path();
            let name = entry_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let weights = name.ends_with(".safetensors") || name.ends_with(".gguf");
            if entry_path.is_file() && (weights || name == "config.json") {
                files.push((name, entry_path));
            }
        }
        files.sort();
    } else {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        files.push((name, path.to_path_buf()));
    }
    let mut hash = Sha256::new();
    let mut buf = Vec::new();
    for (name, file_path) in files {
        let mut file = std::fs::File::open(&file_path).map_err(io(&file_path))?;
        let len = file.metadata().map_err(io(&file_path))?.len();
        hash.update(name.as_bytes());
        hash.update(len.to_le_bytes());
        for start in [0, len.saturating_sub(EDGE)] {
            buf.clear();
            file.seek(SeekFrom::Start(start)).map_err(io(&file_path))?;
            (&mut file)
                .take(EDGE)
                .read_to_end(&mut buf)
                .map_err(io(&file_path))?;
            hash.update(&buf);
        }
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl TrainState {
    /// The state before the first step of a run of `recipe`.
    pub fn fresh(recipe: &vlmkit_recipe::Recipe) -> Self {
        Self {
            global_step: 0,
            stage: 0,
            stage_name: recipe
                .stages
                .first()
                .map(|s| s.name.clone())
                .unwrap_or_default(),
            stage_step: 0,
            samples_seen: 0,
            rng: vlmkit_core::rng::Rng::new(recipe.run.seed).state(),
            metrics_lines: 0,
            skipped: 0,
            truncated: 0,
            vlmkit_version: env!("CARGO_PKG_VERSION").to_string(),
            frozen_sources: BTreeMap::new(),
        }
    }
}

impl TrainState {
    /// Refuses a state that cannot be a point of a run of `recipe` (read from
    /// `path`): a stage the recipe lacks or names differently, steps beyond a
    /// stage's or the run's, fewer examples read than the steps took, or a newer
    /// vlmkit's state. Resuming from it would train the wrong thing or mark an
    /// untrained run finished.
    pub fn check(&self, recipe: &vlmkit_recipe::Recipe, path: &Path) -> Result<(), PipelineError> {
        let refuse = |reason: String| -> Result<(), PipelineError> {
            Err(CheckpointError::ForeignState {
                path: path.to_path_buf(),
                reason,
            }
            .into())
        };
        let this = env!("CARGO_PKG_VERSION");
        match (version_numbers(&self.vlmkit_version), version_numbers(this)) {
            (Some(theirs), Some(ours)) if theirs <= ours => {}
            (Some(_), _) => {
                return refuse(format!(
                    "written by vlmkit {}, newer than this vlmkit {this}",
                    self.vlmkit_version
                ))
            }
            (None, _) => {
                return refuse(format!(
                    "vlmkit_version {:?} is not a version",
                    self.vlmkit_version
                ))
            }
        }
        let stages = &recipe.stages;
        if self.stage > stages.len() {
            return refuse(format!(
                "stage {} of a recipe with {} stage(s)",
                self.stage,
                stages.len()
            ));
        }
        if let Some(stage) = stages.get(self.stage) {
            if self.stage_name != stage.name {
                return refuse(format!(
                    "stage {} is {:?} there, {:?} in the recipe",
                    self.stage, self.stage_name, stage.name
                ));
            }
            if let Some(steps) = stage.steps.filter(|&s| self.stage_step > s) {
                return refuse(format!(
                    "stage_step {} beyond the stage's {steps} steps",
                    self.stage_step
                ));
            }
            let least = self
                .stage_step
                .saturating_mul((stage.batch_size * stage.grad_accum) as u64);
            if self.samples_seen < least {
                return refuse(format!(
                    "samples_seen {} is fewer than {} steps of {} examples",
                    self.samples_seen,
                    self.stage_step,
                    stage.batch_size * stage.grad_accum
                ));
            }
        } else if self.stage_step != 0 {
            return refuse(format!(
                "stage_step {} after the last stage",
                self.stage_step
            ));
        }
        // Stages of a fixed length fix the run's step count; epoch stages only
        // bound it from below.
        let before = &stages[..self.stage];
        let done: Option<u64> = before.iter().map(|s| s.steps).sum();
        let exact = done.map(|d| d + self.stage_step);
        match exact {
            Some(expected) if self.global_step != expected => {
                return refuse(format!(
                    "global_step {} where the recipe's stages give {expected}",
                    self.global_step
                ))
            }
            None if self.global_step < self.stage_step + before.len() as u64 => {
                return refuse(format!(
                    "global_step {} is fewer than the steps its stages took",
                    self.global_step
                ))
            }
            _ => {}
        }
        if self.metrics_lines > self.global_step {
            return refuse(format!(
                "metrics_lines {} beyond its {} steps",
                self.metrics_lines, self.global_step
            ));
        }
        Ok(())
    }
}

/// `major.minor.patch` as numbers (a pre-release suffix ignored).
fn version_numbers(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    let numbers = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(numbers)
}

/// The files a checkpoint holds.
pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";
pub const RECIPE_FILE: &str = "recipe.toml";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A run's directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
}

/// An I/O error, naming `path`.
pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PipelineError + '_ {
    PipelineError::io(path)
}

/// Why a checkpoint (or a run's `latest`) cannot be used. Every variant names
/// the file or directory.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{} points at {}, which is not a complete checkpoint", pointer.display(), target.display())]
    Incomplete { pointer: PathBuf, target: PathBuf },
    #[error("{} names {name:?}, which is not a checkpoint of this run (a `step-N` beside it); delete the file to resume from the newest complete checkpoint", pointer.display())]
    BadPointer { pointer: PathBuf, name: String },
    /// A checkpoint's `state.json` that cannot belong to the run's recipe.
    #[error("{}: {reason}", path.display())]
    ForeignState { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error("{} is neither a checkpoint (no {MODEL_FILE} + {STATE_FILE}) nor a run directory with one", path.display())]
    NotACheckpoint { path: PathBuf },
    /// A pretrained part the checkpoint left out cannot be read back.
    #[error("{} does not hold {what}'s weights: they are the frozen weights of {}, and {why}", dir.display(), source_path.display())]
    FrozenSource {
        dir: PathBuf,
        what: &'static str,
        source_path: PathBuf,
        why: String,
    },
    /// The weights do not fit the model the saved recipe describes.
    #[error("{}: {message}", path.display())]
    Weights { path: PathBuf, message: String },
}

impl RunDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn recipe(&self) -> PathBuf {
        self.path.join(RECIPE_FILE)
    }

    pub fn metrics(&self) -> PathBuf {
        self.path.join("metrics.jsonl")
    }

    /// The examples training skipped, one JSON line each.
    pub fn skipped(&self) -> PathBuf {
        self.path.join("skipped.jsonl")
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.path.join("checkpoints")
    }

    pub fn final_dir(&self) -> PathBuf {
        self.path.join("final")
    }

    pub fn loss_plot(&self) -> PathBuf {
        self.path.join("loss.png")
    }

    /// Refuses the directory if a run was started in it with another recipe than
    /// `recipe_toml` (the resolved recipe), naming the keys that differ; a
    /// directory without a run passes.
    pub fn check_recipe(&self, recipe_toml: &str) -> Result<(), PipelineError> {
        match std::fs::read_to_string(self.recipe()) {
            Ok(existing) => check_same_recipe(&self.path, &existing, recipe_toml),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&self.recipe())(e)),
        }
    }

    /// The file [`RunDir::lock`] locks.
    pub fn lock_file(&self) -> PathBuf {
        self.path.join(LOCK_FILE)
    }

    /// Takes the run directory for this process: an OS lock on `.lock` (released
    /// when the returned guard drops or the process dies, however it dies), which
    /// records the holder's pid. A second process is refused with that pid.
    pub fn lock(&self) -> Result<RunLock, PipelineError> {
        use std::io::{Read, Seek, Write};
        std::fs::create_dir_all(&self.path).map_err(io(&self.path))?;
        let path = self.lock_file();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(PipelineError::RunLocked {
                    dir: self.path.clone(),
                    holder: holder.trim().parse().ok(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
        }
        file.set_len(0).map_err(io(&path))?;
        file.rewind().map_err(io(&path))?;
        writeln!(file, "{}", std::process::id()).map_err(io(&path))?;
        file.sync_all().map_err(io(&path))?;
        Ok(RunLock { _file: file })
    }

    /// Removes what an interrupted process left behind: half-written checkpoint
    /// and file temporaries, checkpoints moved aside to be replaced or pruned.
    /// Only the lock holder may call it (a live writer's temporaries look the
    /// same). Returns what it removed.
    pub fn remove_leftovers(&self, _lock: &RunLock) -> Result<Vec<PathBuf>, PipelineError> {
        let mut removed = Vec::new();
        for dir in [self.path.clone(), self.checkpoints()] {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io(&dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !is_leftover(&name) {
                    continue;
                }
                let path = entry.path();
                let kind = entry.file_type().map_err(io(&path))?;
                if kind.is_dir() {
                    std::fs::remove_dir_all(&path).map_err(io(&path))?;
                } else {
                    std::fs::remove_file(&path).map_err(io(&path))?;
                }
                removed.push(path);
            }
        }
        removed.sort();
        Ok(removed)
    }

    /// The newest complete checkpoint, if any: the one `checkpoints/latest`
    /// names, else (the pointer lost) the highest-numbered complete `step-*`.
    /// A pointer that leaves `checkpoints/` or names an incomplete checkpoint is
    /// refused: following it would make another run's weights this run's.
    pub fn latest(&self) -> Result<Option<PathBuf>, PipelineError> {
        let pointer = self.latest_pointer();
        match std::fs::read_to_string(&pointer) {
            Ok(name) => {
                let name = name.trim();
                if !is_checkpoint_name(name) {
                    return Err(CheckpointError::BadPointer {
                        pointer,
                        name: name.to_string(),
                    }
                    .into());
                }
                let dir = self.checkpoints().join(name);
                if is_complete(&dir) {
                    Ok(Some(dir))
                } else {
                    Err(CheckpointError::Incomplete {
                        pointer,
                        target: dir,
                    }
                    .into())
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.newest_complete(),
            Err(e) => Err(io(&pointer)(e)),
        }
    }

    /// `checkpoints/latest`.
    pub fn latest_pointer(&self) -> PathBuf {
        self.checkpoints().join("latest")
    }

    /// The highest-numbered complete `step-*` checkpoint, found by listing.
    fn newest_complete(&self) -> Result<Option<PathBuf>, PipelineError> {
        let root = self.checkpoints();
        let entries = match std::fs::read_dir(&root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&root)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let name = entry.map_err(io(&root))?.file_name();
            let name = name.to_string_lossy();
            if is_checkpoint_name(&name) && is_complete(&root.join(&*name)) {
                names.push(name.into_owned());
            }
        }
        // Zero-padded: names sort as their steps do.
        Ok(names.into_iter().max().map(|name| root.join(name)))
    }

    /// Writes a checkpoint atomically and points `latest` at it; keeps the newest
    /// `keep` checkpoints.
    pub fn save_checkpoint(
        &self,
        contents: &CheckpointContents,
        keep: usize,
    ) -> Result<PathBuf, PipelineError> {
        let root = self.checkpoints();
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        let name = format!("step-{:06}", contents.state.global_step);
        let dir = write_dir_atomic(&root, &name, contents)?;
        write_atomic(&root.join("latest"), name.as_bytes()).map_err(io(&root))?;
        self.prune(keep.max(1), &name)?;
        Ok(dir)
    }

    /// Writes the final model (no optimizer state) atomically.
    pub fn save_final(&self, contents: &CheckpointContents) -> Result<PathBuf, PipelineError> {
        let final_contents = CheckpointContents {
            optimizer: BTreeMap::new(),
            ..contents.clone()
        };
        write_dir_atomic(&self.path, "final", &final_contents)
    }

    fn prune(&self, keep: usize, newest: &str) -> Result<(), PipelineError> {
        let root = self.checkpoints();
        let mut names: Vec<String> = std::fs::read_dir(&root)
            .map_err(io(&root))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| is_checkpoint_name(n))
            .collect();
        names.sort();
        let excess = names.len().saturating_sub(keep);
        for name in names.into_iter().take(excess) {
            if name != newest {
                // Out of the `step-*` names in one rename, then deleted: a crash
                // mid-delete leaves a leftover, never a partial checkpoint.
                let path = root.join(&name);
                let doomed = root.join(format!(".{name}.pruning-{}", std::process::id()));
                std::fs::rename(&path, &doomed).map_err(io(&path))?;
                std::fs::remove_dir_all(&doomed).map_err(io(&doomed))?;
            }
        }
        Ok(())
    }
}

/// The lock file in a run directory.
pub const LOCK_FILE: &str = ".lock";

/// A run directory held by this process ([`RunDir::lock`]); dropping it
/// releases the lock.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

/// A checkpoint's name: `step-` and its zero-padded step, nothing that leaves
/// the directory.
fn is_checkpoint_name(name: &str) -> bool {
    name.strip_prefix("step-")
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// Every file a checkpoint needs is there (the optimizer's is optional: a stage
/// boundary has none).
fn is_complete(dir: &Path) -> bool {
    [MODEL_FILE, STATE_FILE, RECIPE_FILE, TOKENIZER_FILE]
        .iter()
        .all(|f| dir.join(f).is_file())
}

/// The names this module and [`vlmkit_core::fsutil::write_atomic`] give work in
/// progress: `.<name>.tmp-<pid>`, `.<name>.old-<pid>`, `.<name>.pruning-<pid>`.
fn is_leftover(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    [".tmp-", ".old-", ".pruning-"].iter().any(|marker| {
        rest.rsplit_once(marker)
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// What goes into a checkpoint directory.
#[derive(Debug, Clone)]
pub struct CheckpointContents {
    pub model: BTreeMap<String, Tensor>,
    pub optimizer: BTreeMap<String, Tensor>,
    pub state: TrainState,
    pub recipe_toml: String,
    pub tokenizer_json: String,
}

/// safetensors metadata transformers expects (`format = "pt"`). One key:
/// safetensors takes a HashMap, whose order (and so the file's bytes) would vary
/// between processes with more.
pub(crate) fn pt_metadata() -> Option<std::collections::HashMap<String, String>> {
    Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]))
}

fn write_dir_atomic(
    parent: &Path,
    name: &str,
    c: &CheckpointContents,
) -> Result<PathBuf, PipelineError> {
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    save_safetensors_atomic(&c.model, pt_metadata(), &tmp.join(MODEL_FILE)).map_err(io(&tmp))?;
    if !c.optimizer.is_empty() {
        save_safetensors_atomic(&c.optimizer, pt_metadata(), &tmp.join(OPTIMIZER_FILE))
            .map_err(io(&tmp))?;
    }
    let state = serde_json::to_string_pretty(&c.state).expect("state serialises");
    write_atomic(&tmp.join(STATE_FILE), state.as_bytes()).map_err(io(&tmp))?;
    write_atomic(&tmp.join(RECIPE_FILE), c.recipe_toml.as_bytes()).map_err(io(&tmp))?;
    write_atomic(&tmp.join(TOKENIZER_FILE), c.tokenizer_json.as_bytes()).map_err(io(&tmp))?;
    let dir = parent.join(name);
    if dir.exists() {
        // Replacing an existing directory cannot be one rename: move it aside first.
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(&dir, &old).map_err(io(&dir))?;
        std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    } else {
        std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
    }
    sync_dir(Some(parent)).map_err(io(parent))?;
    Ok(dir)
}

/// A checkpoint read back.
#[derive(Debug)]
pub struct LoadedCheckpoint {
    pub dir: PathBuf,
    pub model: BTreeMap<String, Tensor>,
    pub optimizer: BTreeMap<String, Tensor>,
    pub state: TrainState,
    pub recipe_toml: String,
    pub tokenizer_json: String,
}

/// The run in `dir` was made by `existing` (a resolved recipe); refuses it unless
/// `planned` is the same recipe.
pub fn check_same_recipe(dir: &Path, existing: &str, planned: &str) -> Result<(), PipelineError> {
    if existing == planned {
        return Ok(());
    }
    let differences = match (
        existing.parse::<toml::Table>(),
        planned.parse::<toml::Table>(),
    ) {
        (Ok(old), Ok(new)) => recipe_differences(&old, &new),
        _ => Vec::new(),
    };
    Err(PipelineError::DifferentRecipe {
        dir: dir.to_path_buf(),
        differences,
    })
}

/// `key: old → new` for every leaf key that differs (at most 8).
fn recipe_differences(old: &toml::Table, new: &toml::Table) -> Vec<String> {
    fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            toml::Value::Array(items) if items.iter().all(|v| v.is_table()) => {
                for (i, v) in items.iter().enumerate() {
                    flatten(&format!("{prefix}.{i}"), v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", &toml::Value::Table(old.clone()), &mut a);
    flatten("", &toml::Value::Table(new.clone()), &mut b);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let absent = "(unset)".to_string();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .take(8)
        .map(|k| {
            format!(
                "{k}: {} there, {} here",
                a.get(k).unwrap_or(&absent),
                b.get(k).unwrap_or(&absent)
            )
        })
        .collect()
}

/// Reads the training state of a checkpoint (or `final`) directory alone, not its
/// tensors.
pub fn read_state(dir: &Path) -> Result<TrainState, PipelineError> {
    let path = dir.join(STATE_FILE);
    let unreadable = |reason: String| CheckpointError::Unreadable {
        path: path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| unreadable(e.to_string()))?;
    Ok(serde_json::from_str(&text).map_err(|e| unreadable(e.to_string()))?)
}

/// Reads a checkpoint (or `final`) directory; a missing or corrupt file is refused
/// with the reason.
pub fn load_checkpoint(dir: &Path) -> Result<LoadedCheckpoint, PipelineError> {
    let read = |name: &str| -> Result<String, PipelineError> {
        let p = dir.join(name);
        std::fs::read_to_string(&p).map_err(|e| {
            CheckpointError::Unreadable {
                path: p.clone(),
                reason: e.to_string(),
            }
            .into()
        })
    };
    let tensors = |name: &str, required: bool| -> Result<BTreeMap<String, Tensor>, PipelineError> {
        let p = dir.join(name);
        if !p.exists() && !required {
            return Ok(BTreeMap::new());
        }
        let map = candle_core::safetensors::load(&p, &candle_core::Device::Cpu).map_err(|e| {
            CheckpointError::Unreadable {
                path: p.clone(),
                reason: format!("not a readable safetensors file: {e}"),
            }
        })?;
        Ok(map.into_iter().collect())
    };
    let state = read_state(dir)?;
    Ok(LoadedCheckpoint {
        dir: dir.to_path_buf(),
        model: tensors(MODEL_FILE, true)?,
        optimizer: tensors(OPTIMIZER_FILE, false)?,
        state,
        recipe_toml: read(RECIPE_FILE)?,
        tokenizer_json: read(TOKENIZER_FILE)?,
    })
}

/// Resolves what a user names for evaluation: a checkpoint directory, or a run
/// directory (its `final`, else its newest checkpoint).
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf, PipelineError> {
    if path.join(STATE_FILE).is_file() && path.join(MODEL_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    let run = RunDir::new(path);
    if run.final_dir().join(STATE_FILE).is_file() {
        return Ok(run.final_dir());
    }
    if let Some(latest) = run.latest()? {
        return Ok(latest);
    }
    Err(CheckpointError::NotACheckpoint {
        path: path.to_path_buf(),
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_fingerprints_follow_the_weights_not_the_place() {
        let dir = tempfile::tempdir().unwrap();
        let model = |name: &str, weights: &[u8]| {
            let path = dir.path().join(name);
            std::fs::create_dir_all(&path).unwrap();
            std::fs::write(path.join("config.json"), b"{\"hidden_size\": 8}").unwrap();
            std::fs::write(path.join("model.safetensors"), weights).unwrap();
            path
        };
        // Larger than the two MiB read at its ends: the middle is not read.
        let mut weights = vec![7u8; 3 << 20];
        let a = model("a", &weights);
        let copy = model("copy", &weights);
        let print = source_fingerprint(&a).unwrap();
        assert_eq!(print.len(), 64);
        assert_eq!(source_fingerprint(&copy).unwrap(), print);
        // Files that hold no weights do not count.
        std::fs::write(copy.join("README.md"), b"notes").unwrap();
        assert_eq!(source_fingerprint(&copy).unwrap(), print);

        let last = weights.len() - 1;
        weights[last] = 8;
        assert_ne!(source_fingerprint(&model("tail", &weights)).unwrap(), print);
        weights[last] = 7;
        weights[0] = 8;
        assert_ne!(source_fingerprint(&model("head", &weights)).unwrap(), print);
        weights[0] = 7;
        let shorter = model("shorter", &weights[1..]);
        assert_ne!(source_fingerprint(&shorter).unwrap(), print);
        std::fs::write(copy.join("config.json"), b"{\"hidden_size\": 9}").unwrap();
        assert_ne!(source_fingerprint(&copy).unwrap(), print);
        // A single file (GGUF) by itself.
        let file = a.join("model.safetensors");
        assert_eq!(source_fingerprint(&file).unwrap().len(), 64);
        assert_ne!(source_fingerprint(&file).unwrap(), print);
        assert!(source_fingerprint(&dir.path().join("absent.gguf")).is_err());
    }

    #[test]
    fn names_of_checkpoints_and_leftovers() {
        for good in ["step-000020", "step-1"] {
            assert!(is_checkpoint_name(good), "{good}");
        }
        for bad in [
            "step-",
            "step-../x",
            "../step-1",
            "step-1/..",
            "latest",
            "final",
        ] {
            assert!(!is_checkpoint_name(bad), "{bad}");
        }
        for leftover in [
            ".step-000020.tmp-123",
            ".final.old-9",
            ".step-000005.pruning-77",
            ".metrics.jsonl.tmp-4",
        ] {
            assert!(is_leftover(leftover), "{leftover}");
        }
        for kept in [".lock", "step-000020", ".tmp-", ".notes.tmp-x", "a.tmp-1"] {
            assert!(!is_leftover(kept), "{kept}");
        }
        assert_eq!(version_numbers("0.1.0"), Some((0, 1, 0)));
        assert_eq!(version_numbers("1.20.3-rc.1"), Some((1, 20, 3)));
        assert_eq!(version_numbers("1.2"), None);
        assert_eq!(version_numbers("x"), None);
        assert!(version_numbers("0.10.0") > version_numbers("0.9.9"));
    }

    #[test]
    fn a_second_lock_on_a_run_directory_is_refused_until_the_first_drops() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("run"));
        let held = run.lock().unwrap();
        let err = run.lock().unwrap_err().to_string();
        assert!(
            err.contains(&format!("(pid {})", std::process::id())),
            "{err}"
        );
        drop(held);
        let again = run.lock().unwrap();
        std::fs::create_dir_all(run.checkpoints().join(".step-000001.tmp-5")).unwrap();
        std::fs::create_dir_all(run.checkpoints().join("step-000001")).unwrap();
        let removed = run.remove_leftovers(&again).unwrap();
        assert_eq!(removed, [run.checkpoints().join(".step-000001.tmp-5")]);
        // An incomplete `step-*` is not found as the newest checkpoint.
        assert_eq!(run.latest().unwrap(), None);
    }

    #[test]
    fn recipe_differences_name_the_keys() {
        let old: toml::Table = "[run]\nseed = 1\nname = \"a\"\n[[stage]]\nlr = 0.1\n"
            .parse()
            .unwrap();
        let new: toml::Table = "[run]\nseed = 2\nname = \"a\"\n[[stage]]\nlr = 0.2\nsteps = 3\n"
            .parse()
            .unwrap();
        assert_eq!(
            recipe_differences(&old, &new),
            [
                "run.seed: 1 there, 2 here",
                "stage.0.lr: 0.1 there, 0.2 here",
                "stage.0.steps: (unset) there, 3 here"
            ]
        );
    }
}
