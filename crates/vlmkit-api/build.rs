//! Writes the build fingerprint of this API library (`OUT_DIR/fingerprint.rs`):
//! what a plugin compiled against it must share with the running vlmkit. The
//! build id hashes the compiler, target, profile, features and flags together
//! with the lockfile and the sources of every vlmkit crate this library bundles,
//! because Rust symbol names do not change when a struct or trait does: a plugin
//! built against an older source would link cleanly and then crash.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The vlmkit crates compiled into this library.
const BUNDLED: &[&str] = &[
    "vlmkit-api",
    "vlmkit-plugin",
    "vlmkit-core",
    "vlmkit-recipe",
];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.join("../..");
    let var = |name: &str| env::var(name).unwrap_or_default();

    let rustc_path = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let rustc = Command::new(&rustc_path)
        .arg("-V")
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .expect("`rustc -V` runs");
    let lock = fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    let candle = locked_version(&lock, "candle-core").unwrap_or_else(|| "unknown".to_string());
    let mut backends = vec!["cpu"];
    if env::var_os("CARGO_FEATURE_CUDA").is_some() {
        backends.push("cuda");
    }
    let backends = backends.join(",");
    let target = var("TARGET");
    let profile = var("PROFILE");
    let vlmkit = var("CARGO_PKG_VERSION");

    let mut hash = Sha256::new();
    for part in [
        &rustc,
        &target,
        &profile,
        &var("OPT_LEVEL"),
        &var("DEBUG"),
        &var("CARGO_CFG_PANIC"),
        &backends,
        &candle,
        &vlmkit,
        &var("CARGO_ENCODED_RUSTFLAGS"),
        &lock,
    ] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let mut files = vec![root.join("Cargo.toml")];
    for krate in BUNDLED {
        let dir = root.join("crates").join(krate);
        println!("cargo:rerun-if-changed={}", dir.display());
        collect_files(&dir, &mut files);
    }
    files.sort();
    for file in &files {
        let relative = file.strip_prefix(&root).unwrap_or(file);
        hash.update(relative.to_string_lossy().as_bytes());
        hash.update([0]);
        hash.update(fs::read(file).unwrap_or_default());
        hash.update([0]);
    }
    let build_id: [u8; 32] = hash.finalize().into();

    let out = PathBuf::from(var("OUT_DIR")).join("fingerprint.rs");
    let text = format!(
        "/// What this API library was built from and with.\n\
         pub const FINGERPRINT: vlmkit_plugin::Fingerprint = vlmkit_plugin::Fingerprint {{\n    \
         build_id: {build_id:?},\n    rustc: {rustc:?},\n    target: {target:?},\n    \
         profile: {profile:?},\n    backends: {backends:?},\n    candle: {candle:?},\n    \
         vlmkit: {vlmkit:?},\n}};\n"
    );
    fs::write(out, text).expect("OUT_DIR is writable");
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.toml").display()
    );
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
}

/// `version` of the first `[[package]]` named `name` in a Cargo.lock.
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("name = \"{name}\"") {
            let version = lines.next()?.trim();
            return Some(
                version
                    .strip_prefix("version = \"")?
                    .strip_suffix('"')?
                    .to_string(),
            );
        }
    }
    None
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        // Test fixtures and editor files do not reach the library.
        if name.to_string_lossy().starts_with('.') || name == "tests" || name == "benches" {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, out);
        } else {
            out.push(path);
        }
    }
}
