//! Pieces every command uses: the components (connectors and plugins, vision
//! encoders, losses), recipe loading, threads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result};
use vlmkit_pipeline::{Components, Plan};
use vlmkit_plugin::loader::Host;
use vlmkit_plugin::Registry;
use vlmkit_recipe::Recipe;

/// Plugins named with `--plugin` (loaded into every registry of this process).
static COMMAND_LINE_PLUGINS: OnceLock<Vec<PathBuf>> = OnceLock::new();

/// Records the `--plugin` paths; called once, before any command runs.
pub fn set_command_line_plugins(paths: Vec<PathBuf>) {
    COMMAND_LINE_PLUGINS
        .set(paths)
        .expect("the command-line plugins are set once");
}

/// This process as plugins see it: the shared API library it loaded, and the
/// build of it the binary was linked against.
pub fn host() -> Host {
    Host {
        api: &vlmkit_api::VLMKIT_API_DECL,
        linked_build_id: vlmkit_api::FINGERPRINT.build_id,
    }
}

/// The built-in connectors and those of the `--plugin` libraries; a recipe's own
/// `[plugins]` are added when its plan is made.
pub fn registry() -> Result<Registry> {
    let mut registry = builtin_registry().with_host(host());
    for path in COMMAND_LINE_PLUGINS.get().into_iter().flatten() {
        registry
            .load_plugin(path, &BTreeMap::new())
            .with_context(|| format!("--plugin {}", path.display()))?;
    }
    Ok(registry)
}

/// [`registry`]'s connectors with vlmkit's vision encoders and losses: what a
/// recipe's names are looked up in.
pub fn components() -> Result<Components> {
    Ok(Components::new(registry()?))
}

/// The model `path` names: a recipe's as training would start it (pretrained
/// parts from their checkpoints, the rest from the seed), else a run's or a
/// checkpoint's. `overrides` apply to the recipe, or to a run's saved recipe.
pub fn model_or_recipe(
    path: &Path,
    device: Option<&str>,
    overrides: &[String],
) -> Result<vlmkit_pipeline::LoadedModel> {
    Ok(if path.is_file() {
        let plan = plan(path, overrides)?;
        vlmkit_pipeline::untrained_model(plan, path, device)?
    } else {
        vlmkit_pipeline::load_model(path, &components()?, device, overrides)?
    })
}

/// The connectors compiled into vlmkit.
pub fn builtin_registry() -> Registry {
    let mut registry = Registry::new();
    connector_mlp::register(&mut registry).expect("built-in connectors have distinct kinds");
    connector_ccra::register(&mut registry).expect("built-in connectors have distinct kinds");
    connector_dense::register(&mut registry).expect("built-in connectors have distinct kinds");
    connector_mmfuser::register(&mut registry).expect("built-in connectors have distinct kinds");
    connector_igva::register(&mut registry).expect("built-in connectors have distinct kinds");
    connector_age::register(&mut registry).expect("built-in connectors have distinct kinds");
    registry
}

unsafe extern "C" {
    // mimalloc's C API, linked in through the `mimalloc` crate.
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc.h's option enum (v2 and v3 alike).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Makes sure mimalloc (built with `override`, so it *is* `malloc`) is linked
/// (nothing else names it), and keeps the pages it frees: by default it hands
/// them back to the kernel after 10 ms, and a training step then page-faults
/// (and zero-fills) every activation buffer again, step after step.
/// `MIMALLOC_PURGE_DELAY` in the environment still decides when set.
pub fn configure_allocator() {
    use std::alloc::{GlobalAlloc, Layout};
    let layout = Layout::new::<u64>();
    // SAFETY: a non-zero-sized layout; the block is freed with the same layout.
    unsafe {
        let block = mimalloc::MiMalloc.alloc(layout);
        if !block.is_null() {
            mimalloc::MiMalloc.dealloc(block, layout);
        }
    }
    set_purge_delay(steady_purge_delay());
}

/// The purge delay between runs: `MIMALLOC_PURGE_DELAY` when set, else never.
pub fn steady_purge_delay() -> std::ffi::c_long {
    std::env::var("MIMALLOC_PURGE_DELAY")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1)
}

/// mimalloc's purge delay in milliseconds (`-1`: never purge).
pub fn set_purge_delay(milliseconds: std::ffi::c_long) {
    // SAFETY: sets one integer option; mimalloc reads it on its next purge.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, milliseconds) }
}

/// Loads and validates a recipe with `--set` overrides.
pub fn plan(recipe: &Path, overrides: &[String]) -> Result<Plan> {
    let recipe = Recipe::load(recipe, overrides)?;
    Ok(Plan::new(recipe, &components()?, None)?)
}

/// Loads a recipe for inspection only: pretrained weights and the tokenizer file
/// need not exist (`vlmkit params`, `vlmkit recipe check`).
pub fn inspect_plan(recipe: &Path, overrides: &[String]) -> Result<Plan> {
    let recipe = Recipe::load(recipe, overrides)?;
    Ok(Plan::inspect(recipe, &components()?)?)
}

/// Runs every op single-threaded: the trainer (and evaluation) parallelise over
/// parts of a batch instead, which is what pays at these model sizes. Must run
/// before the first tensor op (candle reads the variable when it sizes its pools).
pub fn single_threaded_ops() {
    std::env::set_var("RAYON_NUM_THREADS", "1");
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global();
    vlmkit_core::ops::set_intra_op_threads(1);
}

/// The recipe error `err` is, directly or as a library's `Recipe` variant.
fn recipe_error(err: &anyhow::Error) -> Option<&vlmkit_recipe::RecipeError> {
    use vlmkit_pipeline::PipelineError;
    if let Some(e) = err.downcast_ref::<vlmkit_recipe::RecipeError>() {
        return Some(e);
    }
    if let Some(PipelineError::Recipe(e)) = err.downcast_ref::<PipelineError>() {
        return Some(e);
    }
    if let Some(vlmkit_train::TrainError::Recipe(e)) = err.downcast_ref() {
        return Some(e);
    }
    if let Some(vlmkit_eval::EvalError::Recipe(e)) = err.downcast_ref() {
        return Some(e);
    }
    if let Some(vlmkit_study::StudyError::Recipe(e)) = err.downcast_ref() {
        return Some(e);
    }
    None
}

/// Prints an error chain: recipe errors are already formatted as diagnostics
/// (`error: …` with the file, line and key), whichever library passed them on.
pub fn report_error(err: &anyhow::Error) {
    if let Some(diagnostic) = recipe_error(err) {
        eprintln!("{diagnostic}");
        return;
    }
    for line in error_lines(err) {
        eprintln!("{line}");
    }
}

/// `error: …` and a `caused by: …` line for each cause that says something the
/// lines before it did not (wrappers that repeat their source, `#[error("{0}")]`
/// with `#[from]`, would print every message twice).
fn error_lines(err: &anyhow::Error) -> Vec<String> {
    let head = err.to_string();
    let head = head.strip_prefix("error: ").unwrap_or(&head).to_string();
    let mut said = head.clone();
    let mut lines = vec![format!("error: {head}")];
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !said.contains(&text) {
            lines.push(format!("  caused by: {text}"));
            said.push_str(&text);
        }
    }
    lines
}

/// Refuses an output path (given with `flag`) that is one of `inputs`, or lies
/// inside one that is a directory: writing it would destroy what the command reads.
pub fn refuse_overwriting_inputs(flag: &str, out: &Path, inputs: &[&Path]) -> Result<()> {
    let absolute = |p: &Path| {
        std::fs::canonicalize(p).unwrap_or_else(|_| {
            // A path that does not exist yet: its existing parent, resolved.
            match (p.parent(), p.file_name()) {
                (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
                    std::fs::canonicalize(parent)
                        .unwrap_or_else(|_| parent.to_path_buf())
                        .join(name)
                }
                _ => std::env::current_dir().unwrap_or_default().join(p),
            }
        })
    };
    let target = absolute(out);
    for input in inputs {
        let input_path = absolute(input);
        if target == input_path || (input.is_dir() && target.starts_with(&input_path)) {
            anyhow::bail!(
                "{flag} {} would overwrite {}, which this command reads; write the output elsewhere",
                out.display(),
                input.display()
            );
        }
    }
    Ok(())
}

/// Makes `dir` (an output directory) and checks that files can be written in it,
/// before any work whose results it is to hold.
pub fn writable_output_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--out {}: cannot be made a directory", dir.display()))?;
    let probe = dir.join(format!(".vlmkit-write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("--out {}: files cannot be written there", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_that_repeat_the_message_are_not_printed_again() {
        let io = std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "File exists (os error 17)",
        );
        let wrapped = anyhow::Error::new(io).context("File exists (os error 17)");
        assert_eq!(error_lines(&wrapped), ["error: File exists (os error 17)"]);
        let io = std::io::Error::other("disk full");
        let wrapped = anyhow::Error::new(io).context("runs/a/metrics.jsonl: writing");
        assert_eq!(
            error_lines(&wrapped),
            [
                "error: runs/a/metrics.jsonl: writing",
                "  caused by: disk full"
            ]
        );
        let doubled = anyhow::anyhow!("error: the stage's training data is empty");
        assert_eq!(
            error_lines(&doubled),
            ["error: the stage's training data is empty"]
        );
    }
}
