//! Broken on purpose, one way per feature (see Cargo.toml). Built against the
//! host's `libvlmkit_api.so` like a real plugin, so only the defect differs.

#[cfg(not(feature = "no-decl"))]
#[no_mangle]
#[used]
pub static VLMKIT_PLUGIN_DECL: vlmkit_api::PluginDecl = vlmkit_api::PluginDecl::new(
    &vlmkit_api::FINGERPRINT,
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_VERSION"),
    cfg!(panic = "unwind"),
    cfg!(debug_assertions),
);

/// Links libvlmkit_api.so as every real plugin does (its declaration alone is a
/// constant, which needs no library at run time).
#[cfg(not(feature = "no-decl"))]
#[no_mangle]
pub fn misbuilt_uses_the_api() -> u32 {
    std::hint::black_box(&vlmkit_api::VLMKIT_API_DECL).decl_size
}

#[cfg(feature = "no-decl")]
#[no_mangle]
pub extern "C" fn not_a_plugin() -> u32 {
    7
}

#[cfg(not(any(feature = "no-decl", feature = "no-register")))]
#[no_mangle]
pub fn vlmkit_plugin_register_v1(registrar: &mut vlmkit_api::Registrar) {
    if cfg!(feature = "panic") {
        panic!("this plugin refuses to register");
    }
    #[cfg(feature = "collide")]
    registrar.connector(collide::Mlp);
    let _ = registrar;
}

#[cfg(feature = "collide")]
mod collide {
    use vlmkit_api::prelude::*;

    /// Claims the built-in kind `mlp`.
    pub struct Mlp;

    #[derive(Clone, Default, vlmkit_api::serde::Serialize, vlmkit_api::serde::Deserialize)]
    #[serde(crate = "vlmkit_api::serde")]
    pub struct NoSettings {}

    impl ConnectorFactory for Mlp {
        type Config = NoSettings;
        const KIND: &'static str = "mlp";
        const SUMMARY: &'static str = "an impostor";
        fn needs(
            &self,
            _config: &NoSettings,
            _vision: &VisionInfo,
        ) -> Result<ConnectorNeeds, ConfigError> {
            Ok(ConnectorNeeds::prefix(vec![-2]))
        }
        fn build(
            &self,
            _config: &NoSettings,
            _env: &ConnectorEnv,
            _vb: VarBuilder,
        ) -> Result<Box<dyn Connector>, vlmkit_api::BuildError> {
            Err(ConfigError::new("kind", "never built").into())
        }
    }
}
