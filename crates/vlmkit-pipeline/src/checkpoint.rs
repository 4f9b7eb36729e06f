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
//! intact and findable.

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
    /// Examples skipped over the whole run because their image was missing or
    /// corrupt (LLaVA data).
    #[serde(default)]
    pub skipped_images: u64,
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
            skipped_images: 0,
            vlmkit_version: env!("CARGO_PKG_VERSION").to_string(),
            frozen_sources: BTreeMap::new(),
        }
    }
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

    /// The newest complete checkpoint, if any.
    pub fn latest(&self) -> Result<Option<PathBuf>, PipelineError> {
        let pointer = self.checkpoints().join("latest");
        match std::fs::read_to_string(&pointer) {
            Ok(name) => {
                let dir = self.checkpoints().join(name.trim());
                if dir.join(STATE_FILE).is_file() {
                    Ok(Some(dir))
                } else {
                    Err(CheckpointError::Incomplete {
                        pointer,
                        target: dir,
                    }
                    .into())
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&pointer)(e)),
        }
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
            .filter(|n| n.starts_with("step-"))
            .collect();
        names.sort();
        let excess = names.len().saturating_sub(keep);
        for name in names.into_iter().take(excess) {
            if name != newest {
                let path = root.join(&name);
                std::fs::remove_dir_all(&path).map_err(io(&path))?;
            }
        }
        Ok(())
    }
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
