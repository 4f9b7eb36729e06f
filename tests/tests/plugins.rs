//! Out-of-tree connector plugins, end to end: the example plugin built against
//! this build's `libvlmkit_api.so`, loaded, and trained bit-identically to the
//! same source linked in; broken libraries refused with their reasons, before
//! `dlopen` where the file can tell; `vlmkit new connector` from scaffold to a
//! trained model.

// Links the shared API library, as the `vlmkit` binary does: this test process
// is a plugin host.
use vlmkit_api as _;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};

use vlmkit_pipeline::{Components, Plan, RunDir};
use vlmkit_plugin::loader::{self, Host, LoadError};
use vlmkit_plugin::{Origin, Registry};
use vlmkit_recipe::Recipe;
use vlmkit_tests::{repo, run, set_args, tiny, vlmkit};
use vlmkit_train::progress::Progress;
use vlmkit_train::train;

/// The example's connector, compiled into this test binary from the same source.
#[path = "../../examples/connector-plugin/src/pooled.rs"]
#[allow(dead_code)]
mod pooled;

fn host() -> Host {
    Host {
        api: &vlmkit_api::VLMKIT_API_DECL,
        linked_build_id: vlmkit_api::FINGERPRINT.build_id,
    }
}

/// Serialises the tests that load libraries, so `libraries_opened` counts only
/// the test's own.
fn load_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `target/<profile>` of this build.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// Builds a plugin crate against this process's `libvlmkit_api.so`, as a plugin
/// author does, and returns its library. Builds of one (crate, features) happen
/// once per test process.
fn build_plugin(manifest_dir: &Path, features: &str, target: &Path) -> PathBuf {
    static BUILDS: Mutex<BTreeMap<(PathBuf, String), PathBuf>> = Mutex::new(BTreeMap::new());
    let mut builds = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    let key = (manifest_dir.to_path_buf(), features.to_string());
    if let Some(lib) = builds.get(&key) {
        return lib.clone();
    }
    let libdir = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "target-libdir"])
        .output()
        .unwrap();
    let libdir = String::from_utf8(libdir.stdout).unwrap();
    let build = loader::plugin_build(Path::new(libdir.trim())).unwrap();
    let flags: Vec<String> = build.rustflags.iter().map(|f| format!("{f:?}")).collect();
    let mut cargo = cargo_in(manifest_dir);
    cargo
        .args(["build", "--release", "--offline", "--target-dir"])
        .arg(target)
        .arg("--config")
        .arg(format!("build.rustflags=[{}]", flags.join(",")))
        .arg("--config")
        .arg(format!(
            "env.VLMKIT_API_LIBRARY={:?}",
            build.api_library.display().to_string()
        ));
    if !features.is_empty() {
        cargo.args(["--features", features]);
    }
    let (ok, out, err) = run(&mut cargo);
    assert!(
        ok,
        "building {} failed:\n{out}\n{err}",
        manifest_dir.display()
    );
    let name = manifest_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let lib_name = match name.as_str() {
        "connector-plugin" => "connector_pooled_mlp",
        "misbuilt" => "misbuilt_plugin",
        other => panic!("unknown plugin crate {other}"),
    };
    let built = target.join("release").join(format!("lib{lib_name}.so"));
    // One target dir serves several feature sets of a crate: keep each build's
    // library under its own name.
    let lib = if features.is_empty() {
        built
    } else {
        let copy = target.join(format!("lib{lib_name}-{features}.so"));
        std::fs::copy(&built, &copy).unwrap();
        copy
    };
    builds.insert(key, lib.clone());
    lib
}

/// `cargo` in `dir`, as a plugin author runs it: none of this test run's
/// compiler flags or target directory leak in.
fn cargo_in(dir: &Path) -> Command {
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo.current_dir(dir);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cargo.env_remove(var);
    }
    cargo
}

fn example_dir() -> PathBuf {
    repo().join("examples/connector-plugin")
}

/// The example plugin, where its README and recipe expect it.
fn example_plugin() -> PathBuf {
    build_plugin(&example_dir(), "", &example_dir().join("target"))
}

/// The broken fixture plugin with one defect (`tests/plugins/misbuilt`).
fn misbuilt(feature: &str) -> PathBuf {
    let dir = repo().join("tests/plugins/misbuilt");
    build_plugin(&dir, feature, &target_dir().join("plugin-fixtures"))
}

fn builtin_registry() -> Registry {
    vlmkit_tests::registry().with_host(host())
}

/// Trains the tiny recipe with the example connector from `registry`; returns
/// the logged losses and the final weights' bytes.
fn train_example(registry: &Registry, probe: bool, out: &Path) -> (Vec<f64>, Vec<u8>) {
    let mut overrides = tiny(12);
    overrides.extend([
        "run.log_every=1".to_string(),
        "connector.kind=\"pooled-mlp\"".to_string(),
        format!("connector.probe={probe}"),
    ]);
    let recipe = Recipe::load(&repo().join("recipes/mlp.toml"), &overrides).unwrap();
    let plan = Plan::new(recipe, &Components::new(registry.clone()), None).unwrap();
    let run_dir = RunDir::new(out.to_path_buf());
    train(&plan, &run_dir, &mut Progress::new()).unwrap();
    let losses = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    let weights = std::fs::read(out.join("final/model.safetensors")).unwrap();
    (losses, weights)
}

#[test]
fn a_loaded_plugin_trains_bit_identically_to_the_same_connector_linked_in() {
    let lib = example_plugin();
    let _guard = load_lock();
    let mut linked = builtin_registry();
    linked
        .register(Arc::new(pooled::PooledMlpFactory), Origin::BuiltIn)
        .unwrap();
    let mut loaded = builtin_registry();
    let plugin = loaded.load_plugin(&lib, &BTreeMap::new()).unwrap();
    assert_eq!(plugin.decl.name(), "connector-pooled-mlp");
    assert!(matches!(
        loaded.get("pooled-mlp").unwrap().origin,
        Origin::Plugin(_)
    ));
    let dir = tempfile::tempdir().unwrap();
    // `probe` makes the plugin create a `Var` and tensors inside its forward pass:
    // with a second candle their ids would collide with the host's.
    for probe in [false, true] {
        let (linked_losses, linked_weights) =
            train_example(&linked, probe, &dir.path().join(format!("linked-{probe}")));
        let (loaded_losses, loaded_weights) =
            train_example(&loaded, probe, &dir.path().join(format!("loaded-{probe}")));
        assert_eq!(linked_losses.len(), 12, "a loss per step");
        assert!(
            linked_losses.last() < linked_losses.first(),
            "it trains: {linked_losses:?}"
        );
        assert_eq!(
            linked_losses, loaded_losses,
            "probe = {probe}: losses differ"
        );
        assert!(
            linked_weights == loaded_weights,
            "probe = {probe}: the trained weights differ"
        );
    }
}

/// Copies the example plugin and patches its declaration's bytes in the file.
fn patched_example(dir: &Path, name: &str, patch: impl Fn(&mut [u8])) -> PathBuf {
    let mut bytes = std::fs::read(example_plugin()).unwrap();
    let at = bytes
        .windows(8)
        .position(|w| w == vlmkit_plugin::decl::MAGIC)
        .expect("the declaration is in the file");
    patch(&mut bytes[at..at + vlmkit_plugin::PluginDecl::SIZE]);
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The declaration's `candle` field: after magic, two u32s, the API version,
/// the flags, the build id, rustc, target, profile and backends.
const CANDLE_AT: usize = 8 + 4 + 4 + 4 + 4 + 32 + 64 + 48 + 16 + 48;

fn set_text(field: &mut [u8], text: &str) {
    field.fill(0);
    field[..text.len()].copy_from_slice(text.as_bytes());
}

/// Loads `lib` into a fresh registry; returns the error and whether `dlopen`
/// ran.
fn refuse(lib: &Path) -> (LoadError, bool) {
    let _guard = load_lock();
    let before = loader::libraries_opened();
    let err = builtin_registry()
        .load_plugin(lib, &BTreeMap::new())
        .expect_err("the library must be refused");
    (err, loader::libraries_opened() != before)
}

/// `vlmkit plugins list --plugin LIB`: the error a user sees, paths replaced.
/// vlmkit exits with its error status, not a signal.
fn cli_refusal(lib: &Path) -> String {
    let output = vlmkit()
        .args(["plugins", "list", "--plugin"])
        .arg(lib)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "vlmkit must refuse {} with an error, not crash",
        lib.display()
    );
    scrub(&String::from_utf8_lossy(&output.stderr))
}

fn scrub(text: &str) -> String {
    let mut text = text.replace(&repo().display().to_string(), "<repo>");
    if let Ok(tmp) = std::env::temp_dir().canonicalize() {
        text = text.replace(&tmp.display().to_string(), "<tmp>");
    }
    text = text.replace(&std::env::temp_dir().display().to_string(), "<tmp>");
    // Temporary directory names.
    let re_tmp = |t: &str| -> String {
        t.split('/')
            .map(|part| {
                if part.starts_with(".tmp") {
                    "<dir>"
                } else {
                    part
                }
            })
            .collect::<Vec<_>>()
            .join("/")
    };
    re_tmp(&text)
}

#[test]
fn declarations_from_another_build_are_refused_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    // A plugin built against the plugin API before the typed connector configs.
    let api = patched_example(dir.path(), "libapi1.so", |decl| {
        decl[16..20].copy_from_slice(&1u32.to_le_bytes())
    });
    let candle = patched_example(dir.path(), "libcandle.so", |decl| {
        set_text(&mut decl[CANDLE_AT..CANDLE_AT + 16], "0.10.2")
    });
    let layout = patched_example(dir.path(), "liblayout.so", |decl| {
        decl[8..12].copy_from_slice(&2u32.to_le_bytes())
    });
    for (lib, snapshot) in [
        (&api, "plugin_wrong_api_version"),
        (&candle, "plugin_wrong_candle"),
        (&layout, "plugin_wrong_layout"),
    ] {
        let (err, opened) = refuse(lib);
        assert!(!opened, "{snapshot}: refused only after dlopen: {err}");
        insta::assert_snapshot!(snapshot, cli_refusal(lib));
    }
    let (err, _) = refuse(&api);
    match err {
        LoadError::Incompatible { mismatches, .. } => {
            let fields: Vec<&str> = mismatches.iter().map(|m| m.field).collect();
            assert_eq!(fields, ["plugin API"]);
        }
        other => panic!("expected an incompatible declaration, got {other}"),
    }
}

#[test]
fn broken_libraries_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("libnotes.so");
    std::fs::write(&text, "# not a library\n").unwrap();
    let cases = [
        (text, "plugin_not_a_library", false),
        (misbuilt("no-decl"), "plugin_not_a_plugin", false),
        (misbuilt("no-register"), "plugin_missing_register", false),
        (misbuilt("panic"), "plugin_panics_in_register", true),
        (misbuilt("collide"), "plugin_collides_with_builtin", true),
        (misbuilt(""), "plugin_registers_nothing", true),
    ];
    for (lib, snapshot, loads) in cases {
        let (err, opened) = refuse(&lib);
        assert_eq!(opened, loads, "{snapshot}: {err}");
        let message = cli_refusal(&lib);
        // The panic hook's report comes first (with the plugin's source line):
        // keep the refusal.
        let message: String = message
            .split_inclusive('\n')
            .skip_while(|l| !l.starts_with("error:"))
            .collect();
        insta::assert_snapshot!(snapshot, message);
    }
}

/// The declaration reader on damaged copies of the example plugin: bytes of
/// its declaration (most cases) or anywhere in the ELF file changed, inserted
/// or cut. Reading runs none of the library's code, so every case must end in a
/// declaration or a refusal, never a panic (see tests/fuzz.rs for the other
/// readers; `VLMKIT_FUZZ_CASES` sets the count here too).
#[test]
fn damaged_plugin_files_are_read_or_refused() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let valid = std::fs::read(example_plugin()).unwrap();
    let decl_at = valid
        .windows(8)
        .position(|w| w == vlmkit_plugin::decl::MAGIC)
        .expect("the declaration is in the file");
    let decl_len = vlmkit_plugin::PluginDecl::SIZE;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("libdamaged.so");
    let cases = std::env::var("VLMKIT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let edit = (any::<bool>(), any::<usize>(), any::<u8>(), 0u8..3);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let outcomes = std::cell::RefCell::new(BTreeMap::<String, u32>::new());
    runner
        .run(&prop::collection::vec(edit, 1..5), |edits| {
            let mut bytes = valid.clone();
            for (in_decl, at, byte, kind) in edits {
                // An earlier cut may have shortened the file.
                let len = bytes.len();
                if len == 0 {
                    break;
                }
                let at = if in_decl {
                    (decl_at + at % decl_len) % len
                } else {
                    at % len
                };
                match kind {
                    0 => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ => bytes.truncate(at),
                }
            }
            std::fs::write(&path, &bytes).unwrap();
            let outcome = match loader::read_plugin_file(&path) {
                Ok(_) => "read".to_string(),
                // The variant's name.
                Err(e) => format!("{e:?}")
                    .split([' ', '{', '('])
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            };
            *outcomes.borrow_mut().entry(outcome).or_default() += 1;
            Ok(())
        })
        .unwrap();
    let outcomes = outcomes.into_inner();
    let total: u32 = outcomes.values().sum();
    assert_eq!(total, cases);
    eprintln!("fuzz plugin declarations: {total} cases, no panic, outcomes {outcomes:?}");
}

/// A library anyone can change (its mode, or a directory that lets anyone
/// replace it) is refused before it is read or opened; `/tmp`-like sticky
/// directories and inspecting (which runs nothing) stay allowed. It used to load
/// without a word.
#[test]
fn plugins_that_anyone_could_replace_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let chmod = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    let lib = open.join("libexample.so");
    std::fs::copy(example_plugin(), &lib).unwrap();

    chmod(&lib, 0o666);
    let (err, opened) = refuse(&lib);
    assert!(!opened);
    let message = err.to_string();
    assert!(
        message.contains("libexample.so is writable by every user")
            && message.contains("chmod o-w"),
        "{message}"
    );
    assert!(cli_refusal(&lib).contains("is writable by every user"));

    chmod(&lib, 0o644);
    chmod(&open, 0o777);
    let (err, opened) = refuse(&lib);
    assert!(!opened);
    assert!(
        err.to_string().contains(&format!(
            "{} is writable by every user",
            open.canonicalize().unwrap().display()
        )),
        "{err}"
    );
    // Inspecting reads the file and runs none of it.
    let (ok, out, err) = vlmkit_tests::run(vlmkit().args(["plugins", "inspect"]).arg(&lib));
    assert!(ok, "{err}");
    assert!(
        out.contains("connector-example") || out.contains("example"),
        "{out}"
    );

    // The sticky bit forbids replacing another user's file: loads.
    chmod(&open, 0o1777);
    let _guard = load_lock();
    builtin_registry()
        .load_plugin(&lib, &BTreeMap::new())
        .expect("a sticky directory is safe");
}

#[test]
fn a_pinned_plugin_must_match_its_sha256_and_the_error_names_the_recipe_key() {
    let dir = tempfile::tempdir().unwrap();
    // Beside the recipe, so the message (and its caret line) does not depend on
    // where the repository is.
    let lib = dir.path().join("libconnector_pooled_mlp.so");
    std::fs::copy(example_plugin(), &lib).unwrap();
    let sha = loader::sha256_hex(&std::fs::read(&lib).unwrap());
    let write = |name: &str, pin: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "extends = {:?}\n[plugins]\npaths = [\"libconnector_pooled_mlp.so\"]\nsha256 = {{ \"connector-pooled-mlp\" = \"{pin}\" }}\n\n[connector]\nkind = \"pooled-mlp\"\n",
                repo().join("recipes/base-shapes.toml").display().to_string(),
            ),
        )
        .unwrap();
        path
    };
    let good = write("good.toml", &sha);
    let (ok, out, err) = run(vlmkit().args(["recipe", "check"]).arg(&good));
    assert!(ok, "{out}{err}");
    let bad = write("bad.toml", &"0".repeat(64));
    let (ok, _, err) = run(vlmkit().args(["recipe", "check"]).arg(&bad));
    assert!(!ok);
    insta::assert_snapshot!(
        "plugin_sha256_mismatch",
        scrub(&err).replace(&sha, "<sha256>")
    );
}

#[test]
fn the_cli_lists_inspects_and_trains_a_plugin() {
    let lib = example_plugin();
    let (ok, out, err) = run(vlmkit().args(["plugins", "list"]));
    assert!(ok, "{err}");
    insta::assert_snapshot!("plugins_list_builtin", out);

    let (ok, out, err) = run(vlmkit().args(["plugins", "list", "--plugin"]).arg(&lib));
    assert!(ok, "{err}");
    let entry: String = out
        .split_inclusive('\n')
        .skip_while(|l| !l.starts_with("pooled-mlp"))
        .take(3)
        .collect();
    insta::assert_snapshot!("plugins_list_example", scrub(&entry));

    let (ok, out, err) = run(vlmkit().args(["plugins", "inspect"]).arg(&lib));
    assert!(ok, "{err}");
    assert!(out.contains("compatible: this vlmkit can load it"), "{out}");
    assert!(out.contains("connector-pooled-mlp 0.1.0"), "{out}");

    // The example's recipe names the library relative to itself.
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = run(vlmkit()
        .args(["train", "examples/connector-plugin/recipe.toml", "--out"])
        .arg(dir.path().join("run"))
        .args(set_args(&tiny(6))));
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run(vlmkit()
        .args(["eval"])
        .arg(dir.path().join("run"))
        .args(["--samples", "16"]));
    assert!(
        ok,
        "evaluating a plugin's run reloads the plugin: {out}{err}"
    );
}

#[test]
fn the_host_links_std_candle_and_malloc_once() {
    use object::{Object, ObjectSymbol};
    let _guard = load_lock();
    // This process: the API library it loaded is the one it was linked against.
    host().check().unwrap();
    // The binary links libvlmkit_api.so and libstd-*.so, so plugins can share them.
    let bin = vlmkit_tests::vlmkit_bin();
    let needed = loader::needed_libraries_of(&bin).unwrap();
    assert!(
        needed.iter().any(|n| n == loader::API_LIBRARY),
        "{needed:?}"
    );
    assert!(
        needed.iter().any(|n| n.starts_with("libstd-")),
        "{needed:?}"
    );
    // It defines malloc itself (mimalloc with `override`): std, candle and
    // plugins all allocate through it. A `#[global_allocator]` would be bypassed
    // by the shared libstd.
    let bytes = std::fs::read(&bin).unwrap();
    let elf = object::File::parse(&*bytes).unwrap();
    for symbol in ["malloc", "free", "realloc", "posix_memalign"] {
        assert!(
            elf.dynamic_symbols()
                .any(|s| s.name() == Ok(symbol) && s.is_definition()),
            "the vlmkit binary does not define {symbol}"
        );
    }
}

/// Every selection of the workspace must build the crates inside
/// `libvlmkit_api.so` with the same features: the file has one name whatever
/// its build, so a CLI built by `cargo build` would otherwise break when
/// `cargo test -p vlmkit-tests` rebuilt the library (the pins in
/// crates/vlmkit-api/Cargo.toml).
#[test]
fn the_api_library_builds_the_same_for_every_selection_of_the_workspace() {
    let tree = |args: &[&str]| -> BTreeMap<String, String> {
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo
            .current_dir(repo())
            .args(["tree", "--offline", "--prefix", "none", "-f", "{p}|{f}"])
            .args(args);
        let (ok, out, err) = run(&mut cargo);
        assert!(ok, "cargo tree {args:?}: {err}");
        let mut features: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
        for line in out.lines() {
            let Some((package, list)) = line.split_once('|') else {
                continue;
            };
            let package = package.split(" (").next().unwrap().trim().to_string();
            let list = list.split(" (").next().unwrap_or("");
            features
                .entry(package)
                .or_default()
                .extend(list.split(',').filter(|f| !f.is_empty()).map(String::from));
        }
        features
            .into_iter()
            .map(|(p, f)| (p, f.into_iter().collect::<Vec<_>>().join(",")))
            .collect()
    };
    let api = tree(&["-p", "vlmkit-api", "-e", "normal,build"]);
    let selections: [&[&str]; 3] = [
        &["-p", "vlmkit-cli", "-e", "normal,build"],
        &["-p", "vlmkit-tests", "-e", "normal,build,dev"],
        &["--workspace", "-e", "normal,build,dev"],
    ];
    let reference = tree(selections[0]);
    for selection in &selections[1..] {
        let other = tree(selection);
        for package in api.keys() {
            assert_eq!(
                reference.get(package),
                other.get(package),
                "{package} is built with other features by `cargo tree {selection:?}` than for the CLI alone: pin the union in crates/vlmkit-api/Cargo.toml"
            );
        }
    }
}

#[test]
fn new_connector_scaffolds_a_crate_that_builds_tests_and_trains() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let (ok, _out, err) = run(vlmkit()
        .args(["new", "connector", "demo", "--dir"])
        .arg(&demo));
    assert!(ok, "{err}");
    let mut files: Vec<String> = walk(&demo)
        .iter()
        .map(|p| p.strip_prefix(&demo).unwrap().display().to_string())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            ".cargo/config.toml",
            ".gitignore",
            "Cargo.toml",
            "README.md",
            "base-shapes.toml",
            "build.rs",
            "recipe.toml",
            "src/lib.rs"
        ]
    );
    let cargo = || cargo_in(&demo);
    let (ok, out, err) = run(cargo().args(["build", "--release", "--offline"]));
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run(cargo().args(["test", "--release", "--offline"]));
    assert!(ok, "the scaffold's own test: {out}{err}");
    assert!(
        out.contains("gradients_match_finite_differences ... ok"),
        "{out}"
    );

    let lib = demo.join("target/release/libdemo.so");
    let (ok, out, err) = run(vlmkit().args(["plugins", "inspect"]).arg(&lib));
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run(vlmkit()
        .current_dir(&demo)
        .args(["train", "recipe.toml"])
        .args(set_args(&tiny(4))));
    assert!(ok, "{out}{err}");
    assert!(demo.join("runs/demo/final/model.safetensors").exists());

    // Names it cannot take.
    let (ok, _, err) = run(vlmkit()
        .args(["new", "connector", "mlp", "--out"])
        .arg(dir.path().join("x")));
    assert!(!ok);
    assert!(
        err.contains("`mlp` is a built-in connector's kind"),
        "{err}"
    );
    let (ok, _, err) = run(vlmkit().args(["new", "connector", "My_Fusion"]));
    assert!(!ok);
    assert!(err.contains("use lowercase letters"), "{err}");
    let (ok, _, err) = run(vlmkit()
        .args(["new", "connector", "other", "--out"])
        .arg(&demo));
    assert!(!ok);
    assert!(err.contains("already exists and is not empty"), "{err}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
