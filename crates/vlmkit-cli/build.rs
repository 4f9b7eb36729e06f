//! The binary links std and `libvlmkit_api.so` dynamically (one copy of each for
//! host and plugins). Record where they are, so `./target/release/vlmkit` runs
//! without a library path: `$ORIGIN` finds `libvlmkit_api.so` beside it, the
//! toolchain's target libdir finds `libstd-*.so`.

use std::env;
use std::process::Command;

fn main() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let target = env::var("TARGET").expect("set by cargo");
    let out = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", &target])
        .output()
        .expect("rustc runs");
    let libdir = String::from_utf8(out.stdout).expect("a UTF-8 path");
    println!(
        "cargo:rustc-link-arg-bins=-Wl,-rpath,$ORIGIN:{}",
        libdir.trim()
    );
    // `vlmkit new connector` writes it into a plugin's run path.
    println!("cargo:rustc-env=VLMKIT_TOOLCHAIN_LIBDIR={}", libdir.trim());
    println!("cargo:rerun-if-env-changed=RUSTC");
}
