//! The binary starts and reports its version. (The full CLI suite lives in the
//! workspace's `tests/` crate; this target also makes `cargo test` build the binary.)

#[test]
fn prints_its_version() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vlmkit"))
        .arg("--version")
        .output()
        .expect("vlmkit runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), format!("vlmkit {}", env!("CARGO_PKG_VERSION")));
}
