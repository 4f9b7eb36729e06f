//! The shared library (`libvlmkit_api.so`) that the `vlmkit` binary and every
//! out-of-tree connector plugin link, so a process holds exactly one copy of
//! std, candle and vlmkit's plugin API: candle keys gradients by tensor ids from
//! a process-wide counter, and a plugin with its own copy would silently mix
//! them.
//!
//! A plugin has no cargo dependency on this crate: it compiles against the
//! host's own `libvlmkit_api.so` (`--extern vlmkit_api=…`), because only that
//! file has the host's symbol names. `vlmkit new connector` writes the flags.
//!
//! ```ignore
//! use vlmkit_api::prelude::*;
//!
//! struct MyFactory;
//! impl ConnectorFactory for MyFactory { /* … */ }
//! vlmkit_api::export_plugin!(MyFactory);
//! ```

// Built as a primary package (`cargo build -p vlmkit-api`, or as a workspace
// member), cargo links std statically into the library and everything that links
// it fails with "cannot satisfy dependencies so `std` only shows up once".
const _: () = assert!(
    option_env!("CARGO_PRIMARY_PACKAGE").is_none(),
    "vlmkit-api is built only as a dependency of vlmkit (cargo build --release in the repository root)"
);

pub use serde;
pub use vlmkit_plugin::*;

include!(concat!(env!("OUT_DIR"), "/fingerprint.rs"));

/// This library's own declaration: the live truth a plugin's is compared with.
#[no_mangle]
pub static VLMKIT_API_DECL: PluginDecl = PluginDecl::new(
    &FINGERPRINT,
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_VERSION"),
    cfg!(panic = "unwind"),
    cfg!(debug_assertions),
);

/// Exports a plugin's connectors: the declaration the loader checks before it
/// opens the library, and the function that registers the factories.
///
/// ```ignore
/// vlmkit_api::export_plugin!(MyFactory, MyOtherFactory { width: 8 });
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($($factory:expr),+ $(,)?) => {
        /// What this plugin was built with (read by vlmkit before loading it).
        #[no_mangle]
        #[used]
        pub static VLMKIT_PLUGIN_DECL: $crate::PluginDecl = $crate::PluginDecl::new(
            &$crate::FINGERPRINT,
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            cfg!(panic = "unwind"),
            cfg!(debug_assertions),
        );

        /// Registers this plugin's connectors (called by vlmkit after the checks).
        #[no_mangle]
        pub fn vlmkit_plugin_register_v1(registrar: &mut $crate::Registrar) {
            $( registrar.connector($factory); )+
        }
    };
}
