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

/// Every built-in connector, registered as the CLI registers them.
/// The built-in connectors, vision encoders and losses.
pub fn components() -> vlmkit_pipeline::Components {
    vlmkit_pipeline::Components::new(registry())
}

pub fn registry() -> vlmkit_plugin::Registry {
    let mut registry = vlmkit_plugin::Registry::new();
    connector_mlp::register(&mut registry).unwrap();
    connector_ccra::register(&mut registry).unwrap();
    connector_dense::register(&mut registry).unwrap();
    connector_mmfuser::register(&mut registry).unwrap();
    connector_igva::register(&mut registry).unwrap();
    connector_age::register(&mut registry).unwrap();
    registry
}

/// The first `n` training examples of the built-in data.
pub fn examples(n: u64) -> Vec<vlmkit_data::Example> {
    use vlmkit_data::shapes::{ShapesDataset, Split};
    let ds = ShapesDataset::new(Default::default(), Split::Train).unwrap();
    (0..n).map(|i| ds.get(i).to_example()).collect()
}

/// A small configuration of one connector, on top of [`tiny`].
pub struct ConnectorCase {
    pub name: &'static str,
    pub overrides: &'static [&'static str],
    /// Gates that start closed (zero): tests that need every block to compute
    /// open them.
    pub closed_gates: &'static [&'static str],
}

/// CCRA with the Dice term on its patch map.
pub const CCRA_WITH_DICE: [&str; 2] = [
    "connector.kind=\"ccra\"",
    "stage.0.losses={lm=1.0,dice=0.5}",
];

/// AGE with one gated block before decoder layer 0, and the Dice term.
pub const AGE_WITH_DICE: [&str; 5] = [
    "connector.kind=\"age\"",
    "connector.layers=[0]",
    "connector.heads=2",
    "vision.layers=[-1]",
    "stage.0.losses={lm=1.0,dice=0.5}",
];

/// One small configuration of every built-in connector.
pub const CONNECTORS: [ConnectorCase; 6] = [
    ConnectorCase {
        name: "mlp",
        overrides: &[],
        closed_gates: &[],
    },
    ConnectorCase {
        name: "dense",
        overrides: &[
            "connector.kind=\"dense\"",
            "connector.pool=4",
            "vision.num_hidden_layers=3",
        ],
        closed_gates: &[],
    },
    ConnectorCase {
        name: "mmfuser",
        overrides: &[
            "connector.kind=\"mmfuser\"",
            "connector.levels=[0, 1]",
            "connector.heads=2",
            "vision.num_hidden_layers=3",
        ],
        closed_gates: &["connector.gamma1", "connector.gamma2"],
    },
    ConnectorCase {
        name: "igva",
        overrides: &[
            "connector.kind=\"igva\"",
            "connector.groups=2",
            "connector.heads=2",
            "connector.depth=2",
        ],
        closed_gates: &[],
    },
    ConnectorCase {
        name: "ccra + dice",
        overrides: &CCRA_WITH_DICE,
        closed_gates: &[],
    },
    ConnectorCase {
        name: "age + dice",
        overrides: &AGE_WITH_DICE,
        closed_gates: &["connector.blocks.0.gate_attn", "connector.blocks.0.gate_ff"],
    },
];

/// Sets each of `gates` in `store` to 0.5.
pub fn open_gates(store: &vlmkit_core::params::ParamStore, gates: &[&str]) {
    for gate in gates {
        let var = store
            .get(gate)
            .unwrap_or_else(|| panic!("no parameter `{gate}`"));
        var.set(&var.ones_like().unwrap().affine(0.5, 0.0).unwrap())
            .unwrap();
    }
}
