//! The declaration every out-of-tree plugin exports, and the check that compares
//! it with the running vlmkit.
//!
//! It holds fixed-size byte fields only, no pointers: its bytes are then final in
//! the file (`.rodata`), so the loader reads and checks them *before* `dlopen`
//! runs a line of the library's code. A pointer would be a zero in the file,
//! filled in by a relocation at load time.

use std::fmt;

/// First bytes of every declaration.
pub const MAGIC: [u8; 8] = *b"VLMKITPL";
/// Layout version of [`PluginDecl`]; bumped whenever a field changes.
pub const DECL_VERSION: u32 = 1;
/// Version of the Rust API plugins are written against (the traits, `Registrar`).
/// Bumped on any change a compiled plugin could observe. 2: factories take their
/// settings parsed once, as a typed `Config`.
pub const PLUGIN_API_VERSION: u32 = 2;

/// The exported symbol holding a plugin's [`PluginDecl`].
pub const PLUGIN_DECL_SYMBOL: &str = "VLMKIT_PLUGIN_DECL";
/// The exported function that registers a plugin's connectors.
pub const REGISTER_SYMBOL: &str = "vlmkit_plugin_register_v1";

/// What a library was built with. Text fields are UTF-8, NUL-padded.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PluginDecl {
    pub magic: [u8; 8],
    pub decl_version: u32,
    /// `size_of::<PluginDecl>()` where it was compiled.
    pub decl_size: u32,
    pub plugin_api: u32,
    /// 1 when compiled with `panic = "unwind"` (the only strategy that can share std).
    pub panic_unwind: u8,
    /// 1 when compiled with debug assertions (informational).
    pub debug_assertions: u8,
    pub _pad: [u8; 2],
    /// Hash of everything the vlmkit API library was built from (sources, lockfile,
    /// compiler, target, profile, features, flags).
    pub api_build_id: [u8; 32],
    pub rustc: [u8; 64],
    pub target: [u8; 48],
    pub profile: [u8; 16],
    pub backends: [u8; 48],
    pub candle: [u8; 16],
    pub vlmkit: [u8; 16],
    pub name: [u8; 64],
    pub version: [u8; 32],
}

/// The build facts of a vlmkit API library, as its build script found them.
#[derive(Debug, Clone, Copy)]
pub struct Fingerprint {
    pub build_id: [u8; 32],
    pub rustc: &'static str,
    pub target: &'static str,
    pub profile: &'static str,
    pub backends: &'static str,
    pub candle: &'static str,
    pub vlmkit: &'static str,
}

/// Copies `text` into a NUL-padded field, cut at `N` bytes (on a char boundary).
pub const fn text_field<const N: usize>(text: &str) -> [u8; N] {
    let bytes = text.as_bytes();
    let mut len = if bytes.len() < N { bytes.len() } else { N };
    // Never cut inside a UTF-8 sequence: back up over continuation bytes.
    while len < bytes.len() && len > 0 && (bytes[len] & 0xC0) == 0x80 {
        len -= 1;
    }
    let mut out = [0u8; N];
    let mut i = 0;
    while i < len {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

fn field_text(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl PluginDecl {
    /// Size of the declaration in bytes.
    pub const SIZE: usize = std::mem::size_of::<PluginDecl>();

    /// A declaration for a library built against `api` (inlined where the macro
    /// expands, so a plugin records the API it was compiled against).
    pub const fn new(
        api: &Fingerprint,
        name: &str,
        version: &str,
        panic_unwind: bool,
        debug_assertions: bool,
    ) -> Self {
        Self {
            magic: MAGIC,
            decl_version: DECL_VERSION,
            decl_size: Self::SIZE as u32,
            plugin_api: PLUGIN_API_VERSION,
            panic_unwind: panic_unwind as u8,
            debug_assertions: debug_assertions as u8,
            _pad: [0; 2],
            api_build_id: api.build_id,
            rustc: text_field(api.rustc),
            target: text_field(api.target),
            profile: text_field(api.profile),
            backends: text_field(api.backends),
            candle: text_field(api.candle),
            vlmkit: text_field(api.vlmkit),
            name: text_field(name),
            version: text_field(version),
        }
    }

    /// Reads a declaration from bytes in the layout of this build (x86-64 and
    /// aarch64 Linux: little-endian, no padding between fields). Checks the magic,
    /// the layout version and the size before reading any other field.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DeclError> {
        if bytes.len() < 16 || bytes[..8] != MAGIC {
            return Err(DeclError::BadMagic);
        }
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let (decl_version, decl_size) = (word(8), word(12));
        if decl_version != DECL_VERSION {
            return Err(DeclError::Version {
                found: decl_version,
                expected: DECL_VERSION,
            });
        }
        if decl_size as usize != Self::SIZE || bytes.len() < Self::SIZE {
            return Err(DeclError::Size {
                found: decl_size as usize,
                available: bytes.len(),
                expected: Self::SIZE,
            });
        }
        let mut at = 16;
        let mut take = |n: usize| {
            let field = &bytes[at..at + n];
            at += n;
            field
        };
        let plugin_api = u32::from_le_bytes(take(4).try_into().expect("4 bytes"));
        let flags = take(4);
        let mut decl = Self {
            magic: MAGIC,
            decl_version,
            decl_size,
            plugin_api,
            panic_unwind: flags[0],
            debug_assertions: flags[1],
            _pad: [flags[2], flags[3]],
            api_build_id: [0; 32],
            rustc: [0; 64],
            target: [0; 48],
            profile: [0; 16],
            backends: [0; 48],
            candle: [0; 16],
            vlmkit: [0; 16],
            name: [0; 64],
            version: [0; 32],
        };
        decl.api_build_id.copy_from_slice(take(32));
        decl.rustc.copy_from_slice(take(64));
        decl.target.copy_from_slice(take(48));
        decl.profile.copy_from_slice(take(16));
        decl.backends.copy_from_slice(take(48));
        decl.candle.copy_from_slice(take(16));
        decl.vlmkit.copy_from_slice(take(16));
        decl.name.copy_from_slice(take(64));
        decl.version.copy_from_slice(take(32));
        debug_assert_eq!(at, Self::SIZE, "from_bytes reads every field");
        Ok(decl)
    }

    /// The plugin's crate name.
    pub fn name(&self) -> String {
        field_text(&self.name)
    }

    /// The plugin's crate version.
    pub fn version(&self) -> String {
        field_text(&self.version)
    }

    /// The declaration's fields as (label, value) rows, for `vlmkit plugins inspect`.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        vec![
            ("plugin", format!("{} {}", self.name(), self.version())),
            ("plugin API", self.plugin_api.to_string()),
            ("vlmkit", field_text(&self.vlmkit)),
            ("vlmkit API build", hex(&self.api_build_id)),
            ("rustc", field_text(&self.rustc)),
            ("target", field_text(&self.target)),
            ("profile", field_text(&self.profile)),
            ("backends", field_text(&self.backends)),
            ("candle", field_text(&self.candle)),
            ("panic", panic_strategy(self.panic_unwind).to_string()),
            (
                "debug assertions",
                if self.debug_assertions == 1 {
                    "on"
                } else {
                    "off"
                }
                .to_string(),
            ),
        ]
    }

    /// Every way this plugin's declaration disagrees with the host's (`host` is the
    /// running API library's own declaration). Empty when it may be loaded.
    pub fn mismatches(&self, host: &PluginDecl) -> Vec<Mismatch> {
        let mut out = Vec::new();
        let mut text = |field: &'static str, plugin: &[u8], running: &[u8]| {
            if plugin != running {
                out.push(Mismatch {
                    field,
                    plugin: field_text(plugin),
                    host: field_text(running),
                });
            }
        };
        text("rustc", &self.rustc, &host.rustc);
        text("target", &self.target, &host.target);
        text("vlmkit", &self.vlmkit, &host.vlmkit);
        text("candle", &self.candle, &host.candle);
        text("backends", &self.backends, &host.backends);
        text("profile", &self.profile, &host.profile);
        if self.plugin_api != host.plugin_api {
            out.push(Mismatch {
                field: "plugin API",
                plugin: self.plugin_api.to_string(),
                host: host.plugin_api.to_string(),
            });
        }
        if self.panic_unwind != 1 {
            out.push(Mismatch {
                field: "panic",
                plugin: panic_strategy(self.panic_unwind).to_string(),
                host: panic_strategy(1).to_string(),
            });
        }
        if self.api_build_id != host.api_build_id {
            out.push(Mismatch {
                field: "vlmkit API build",
                plugin: hex(&self.api_build_id),
                host: hex(&host.api_build_id),
            });
        }
        out
    }
}

fn panic_strategy(unwind: u8) -> &'static str {
    if unwind == 1 {
        "unwind"
    } else {
        "abort"
    }
}

impl fmt::Debug for PluginDecl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("PluginDecl");
        for (label, value) in self.rows() {
            s.field(label, &value);
        }
        s.finish()
    }
}

/// One field on which a plugin and the running vlmkit disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub field: &'static str,
    pub plugin: String,
    pub host: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field {
            "panic" => write!(
                f,
                "built with panic = \"{}\"; plugins must unwind (remove `panic = \"abort\"` from its profile)",
                self.plugin
            ),
            "vlmkit API build" => write!(
                f,
                "built against vlmkit API build {}, this vlmkit is build {} (vlmkit was rebuilt or changed since)",
                short(&self.plugin),
                short(&self.host)
            ),
            field => write!(
                f,
                "{field}: built with {}, this vlmkit runs {}",
                quote(&self.plugin),
                quote(&self.host)
            ),
        }
    }
}

fn short(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

fn quote(text: &str) -> String {
    if text.is_empty() {
        "(nothing)".to_string()
    } else {
        text.to_string()
    }
}

/// A declaration that cannot be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeclError {
    #[error("its declaration does not start with the vlmkit plugin magic bytes")]
    BadMagic,
    #[error("its declaration has layout version {found}, this vlmkit reads version {expected}")]
    Version { found: u32, expected: u32 },
    #[error("its declaration says it is {found} bytes ({available} present), this vlmkit's is {expected}")]
    Size {
        found: usize,
        available: usize,
        expected: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    const API: Fingerprint = Fingerprint {
        build_id: [7; 32],
        rustc: "rustc 1.95.0 (59807616e 2026-04-14)",
        target: "x86_64-unknown-linux-gnu",
        profile: "release",
        backends: "cpu",
        candle: "0.11.1",
        vlmkit: "0.1.0",
    };

    fn bytes(decl: &PluginDecl) -> Vec<u8> {
        // SAFETY: PluginDecl is repr(C), made of integers and byte arrays only.
        unsafe {
            std::slice::from_raw_parts(decl as *const PluginDecl as *const u8, PluginDecl::SIZE)
        }
        .to_vec()
    }

    #[test]
    fn the_layout_has_no_padding_and_round_trips() {
        let decl = PluginDecl::new(&API, "demo", "0.2.0", true, false);
        let field_bytes = 8 + 4 + 4 + 4 + 4 + 32 + 64 + 48 + 16 + 48 + 16 + 16 + 64 + 32;
        assert_eq!(PluginDecl::SIZE, field_bytes);
        let read = PluginDecl::from_bytes(&bytes(&decl)).unwrap();
        assert_eq!(read, decl);
        assert_eq!(read.name(), "demo");
        assert_eq!(read.version(), "0.2.0");
    }

    #[test]
    fn every_mismatch_is_reported_at_once() {
        let host = PluginDecl::new(&API, "vlmkit-api", "0.1.0", true, false);
        let other = Fingerprint {
            build_id: [8; 32],
            rustc: "rustc 1.94.0 (4a4ef493e 2026-03-02)",
            candle: "0.10.2",
            ..API
        };
        let plugin = PluginDecl::new(&other, "demo", "0.1.0", false, true);
        let found: Vec<String> = plugin
            .mismatches(&host)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            [
                "rustc: built with rustc 1.94.0 (4a4ef493e 2026-03-02), this vlmkit runs rustc 1.95.0 (59807616e 2026-04-14)",
                "candle: built with 0.10.2, this vlmkit runs 0.11.1",
                "built with panic = \"abort\"; plugins must unwind (remove `panic = \"abort\"` from its profile)",
                "built against vlmkit API build 080808080808, this vlmkit is build 070707070707 (vlmkit was rebuilt or changed since)",
            ]
        );
        assert!(PluginDecl::new(&API, "demo", "0.1.0", true, true)
            .mismatches(&host)
            .is_empty());
    }

    #[test]
    fn unreadable_declarations_are_refused_before_their_fields_are_read() {
        let decl = PluginDecl::new(&API, "demo", "0.1.0", true, false);
        let mut raw = bytes(&decl);
        raw[0] = b'X';
        assert_eq!(PluginDecl::from_bytes(&raw), Err(DeclError::BadMagic));
        let mut raw = bytes(&decl);
        raw[8] = 2;
        assert_eq!(
            PluginDecl::from_bytes(&raw),
            Err(DeclError::Version {
                found: 2,
                expected: 1
            })
        );
        let raw = bytes(&decl);
        assert!(matches!(
            PluginDecl::from_bytes(&raw[..100]),
            Err(DeclError::Size { available: 100, .. })
        ));
    }

    #[test]
    fn text_fields_are_cut_on_char_boundaries() {
        assert_eq!(&text_field::<4>("abcdef"), b"abcd");
        assert_eq!(&text_field::<4>("ab"), b"ab\0\0");
        // "é" is two bytes: cutting after three bytes of "aéé" keeps "aé".
        assert_eq!(&text_field::<4>("aéé"), "aé\0".as_bytes());
    }
}
