//! Helpers shared by the integration tests: the `vlmkit` binary, tiny recipes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repo")
        .to_path_buf()
}

/// The `vlmkit` binary built alongside the tests (`cargo test --workspace` builds it).
pub fn vlmkit_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/vlmkit
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = dir.join(format!("vlmkit{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace` so the CLI is built",
        bin.display()
    );
    bin
}

/// A `vlmkit` command run from the repository root.
pub fn vlmkit() -> Command {
    let mut cmd = Command::new(vlmkit_bin());
    cmd.current_dir(repo());
    cmd.env("NO_COLOR", "1");
    // candle appends a backtrace to its errors when this is set; messages under
    // test must not depend on the caller's environment.
    cmd.env_remove("RUST_BACKTRACE");
    cmd
}

/// Runs and returns (exit success, stdout, stderr).
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("vlmkit runs");
    (
        status.success(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// `--set` overrides that shrink `recipes/mlp.toml` to a model that trains in
/// a second (same world, same connector, same code paths).
pub fn tiny(steps: u64) -> Vec<String> {
    [
        "vision.hidden_size=16",
        "vision.intermediate_size=32",
        "vision.num_hidden_layers=2",
        "vision.num_attention_heads=2",
        "llm.hidden_size=16",
        "llm.intermediate_size=32",
        "llm.num_hidden_layers=1",
        "llm.num_attention_heads=2",
        "llm.num_key_value_heads=1",
        "stage.0.batch_size=8",
        "data.eval.samples=48",
        "eval.batch_size=16",
        "run.log_every=5",
        "run.threads=2",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("stage.0.steps={steps}")])
    .collect()
}

/// `--set a --set b …` as arguments.
pub fn set_args(overrides: &[String]) -> Vec<String> {
    overrides
        .iter()
        .flat_map(|o| ["--set".to_string(), o.clone()])
        .collect()
}
