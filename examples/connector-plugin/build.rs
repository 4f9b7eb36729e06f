//! Rebuilds this plugin whenever the vlmkit it is built against is rebuilt:
//! cargo does not watch the `libvlmkit_api.so` that `--extern` names in
//! .cargo/config.toml, and vlmkit refuses a plugin built against another build.

fn main() {
    println!("cargo:rerun-if-env-changed=VLMKIT_API_LIBRARY");
    match std::env::var("VLMKIT_API_LIBRARY") {
        Ok(library) => println!("cargo:rerun-if-changed={library}"),
        Err(_) => panic!(
            "this plugin builds against a vlmkit: run `vlmkit plugins config > .cargo/config.toml` \
             in this directory, with the vlmkit you will load it into"
        ),
    }
}
