//! Loading connector plugins from shared libraries, soundly or not at all.
//!
//! A plugin shares the host's single copy of std and candle by linking the host's
//! `libvlmkit_api.so` (see `docs/writing-a-connector.md`). Everything that can be
//! checked is checked from the file, before `dlopen` runs any of its code:
//! the declaration ([`PluginDecl`]) against the running API library's, the
//! libraries it links (`DT_NEEDED`: the host's `libvlmkit_api.so` and `libstd`),
//! the registration symbol, and an optional sha256 pin. Only then is it opened
//! (`RTLD_NOW`: a missing symbol fails here, not mid-training), its declaration
//! re-read from memory, and its registration run inside `catch_unwind`.
//! Libraries are never unloaded: their code may be behind any `Arc` in the
//! process.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use object::read::elf::ElfFile64;
use object::{Object, ObjectSection, ObjectSymbol};

use crate::decl::{DeclError, Mismatch, PluginDecl, PLUGIN_DECL_SYMBOL, REGISTER_SYMBOL};
use crate::{ConnectorFactory, DynConnectorFactory, Origin, Registry, RegistryError};

/// The file name of the shared API library every plugin links.
pub const API_LIBRARY: &str = "libvlmkit_api.so";

/// What a plugin's registration function receives: it collects the plugin's
/// connectors; the host registers them once the function has returned.
#[derive(Default)]
pub struct Registrar {
    factories: Vec<Arc<dyn DynConnectorFactory>>,
}

impl std::fmt::Debug for Registrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.factories.iter().map(|f| f.kind()))
            .finish()
    }
}

impl Registrar {
    /// Offers a connector.
    pub fn connector(&mut self, factory: impl ConnectorFactory + 'static) {
        self.factories.push(Arc::new(factory));
    }

    pub fn into_factories(self) -> Vec<Arc<dyn DynConnectorFactory>> {
        self.factories
    }
}

/// Why a library was not loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read plugin {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} is not a shared library: {reason}", path.display())]
    NotLibrary { path: PathBuf, reason: String },
    #[error(
        "{} is not a vlmkit plugin: it exports no `{PLUGIN_DECL_SYMBOL}` (plugins export one with `vlmkit_api::export_plugin!`)",
        path.display()
    )]
    NotPlugin { path: PathBuf },
    #[error("{} is not a plugin this vlmkit can read: {problem}", path.display())]
    Decl { path: PathBuf, problem: DeclError },
    #[error("{}", incompatible(path, name, mismatches))]
    Incompatible {
        path: PathBuf,
        name: String,
        mismatches: Vec<Mismatch>,
    },
    #[error(
        "{} declares itself a vlmkit plugin but exports no `{REGISTER_SYMBOL}` function (export it with `vlmkit_api::export_plugin!`)",
        path.display()
    )]
    MissingRegister { path: PathBuf },
    #[error("{} does not share this vlmkit's std and candle: {}", path.display(), problems.join("; "))]
    Linkage {
        path: PathBuf,
        problems: Vec<String>,
    },
    /// Anyone could change the library before it is loaded (its own mode, or a
    /// directory that lets anyone replace it).
    #[error(
        "refusing plugin {}: {} is writable by every user, so anyone could put their code in this process; make it writable only by its owner (chmod o-w {})",
        path.display(), writable.display(), writable.display()
    )]
    Untrusted { path: PathBuf, writable: PathBuf },
    #[error("{} does not match its pin: the recipe expects sha256 {expected}, the file has {found}", path.display())]
    Sha256 {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("cannot open plugin {}: {reason}", path.display())]
    Open { path: PathBuf, reason: String },
    #[error("{}: the declaration in memory differs from the one in the file", path.display())]
    Changed { path: PathBuf },
    #[error("plugin {} panicked while registering its connectors: {message}", path.display())]
    Panicked { path: PathBuf, message: String },
    #[error("plugin {} registers no connector", path.display())]
    Empty { path: PathBuf },
    #[error("plugin {} is refused: {problem}", path.display())]
    Registry {
        path: PathBuf,
        problem: RegistryError,
    },
    #[error("this vlmkit cannot load plugins: {reason}")]
    Host { reason: String },
    #[error(
        "plugins cannot be built against this vlmkit: {} has no `deps` directory beside it; plugins compile against the build directory of the vlmkit they load into (target/<profile>/ of its checkout), not against a copy of the binary",
        library.display()
    )]
    NoBuildDir { library: PathBuf },
    #[error("a sha256 is pinned for plugin `{name}`, but no plugin of that name was loaded (loaded: {})", if loaded.is_empty() { "none".to_string() } else { loaded.join(", ") })]
    UnusedPin { name: String, loaded: Vec<String> },
}

fn incompatible(path: &Path, name: &str, mismatches: &[Mismatch]) -> String {
    let mut text = format!(
        "plugin {} ({name}) was built for another vlmkit:",
        path.display()
    );
    for mismatch in mismatches {
        text.push_str(&format!("\n  - {mismatch}"));
    }
    text.push_str(&format!("\n  {REBUILD}"));
    text
}

/// How to fix a plugin built against something else.
pub const REBUILD: &str = "rebuild the plugin against this vlmkit, with the same toolchain: \
     `vlmkit plugins config > .cargo/config.toml` in its directory, then `cargo build --release`";

/// What the file says about itself, read without loading it.
#[derive(Debug, Clone)]
pub struct PluginFile {
    pub path: PathBuf,
    pub sha256: String,
    pub decl: PluginDecl,
    /// Its `DT_NEEDED` libraries.
    pub needed: Vec<String>,
    pub has_register: bool,
}

/// The running host: its API library's declaration and the libraries it links.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    /// The loaded `libvlmkit_api.so`'s own declaration (read through the library,
    /// not a constant inlined into the binary).
    pub api: &'static PluginDecl,
    /// The build id the binary was compiled against (`vlmkit_api::FINGERPRINT`),
    /// to catch a `libvlmkit_api.so` replaced after the binary was linked.
    pub linked_build_id: [u8; 32],
}

/// A loaded plugin: its declaration and connectors.
#[derive(Debug, Clone)]
pub struct LoadedPlugin {
    pub path: PathBuf,
    pub sha256: String,
    pub decl: PluginDecl,
    pub factories: Vec<Arc<dyn DynConnectorFactory>>,
}

impl LoadedPlugin {
    /// Registers every connector of the plugin, or none: a kind already taken
    /// refuses the whole plugin.
    pub fn register_into(&self, registry: &mut Registry) -> Result<(), LoadError> {
        let origin = Origin::Plugin(self.path.clone());
        let mut staged = registry.clone();
        for factory in &self.factories {
            staged
                .register(factory.clone(), origin.clone())
                .map_err(|problem| LoadError::Registry {
                    path: self.path.clone(),
                    problem,
                })?;
        }
        *registry = staged;
        Ok(())
    }
}

fn read_error(path: &Path) -> impl FnOnce(std::io::Error) -> LoadError + '_ {
    move |error| LoadError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// sha256 of a file, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The largest library read (a plugin with full debug information is some
/// hundreds of MB).
const MAX_LIBRARY_BYTES: u64 = 4 << 30;

/// The bytes of the shared library at `path`, which must be a regular file.
fn read_library(path: &Path) -> Result<Vec<u8>, LoadError> {
    vlmkit_core::fsutil::check_regular_file(path, MAX_LIBRARY_BYTES).map_err(read_error(path))?;
    std::fs::read(path).map_err(read_error(path))
}

/// Reads a plugin's declaration, linked libraries and symbols from the file.
/// Runs none of its code.
pub fn read_plugin_file(path: &Path) -> Result<PluginFile, LoadError> {
    let bytes = read_library(path)?;
    let sha256 = sha256_hex(&bytes);
    let elf = parse_shared_library(path, &bytes)?;
    let symbol = |name: &str| {
        elf.dynamic_symbols()
            .find(|s| s.name() == Ok(name) && s.is_definition())
    };
    let Some(decl_symbol) = symbol(PLUGIN_DECL_SYMBOL) else {
        return Err(LoadError::NotPlugin {
            path: path.to_path_buf(),
        });
    };
    let section = decl_symbol
        .section_index()
        .and_then(|index| elf.section_by_index(index).ok());
    // The layout this vlmkit reads, else (a shorter declaration) what the symbol
    // says it has, so the size check can say so.
    let bytes_of = |size: u64| {
        section
            .as_ref()
            .and_then(|s| s.data_range(decl_symbol.address(), size).ok().flatten())
    };
    let decl_bytes = bytes_of(PluginDecl::SIZE as u64)
        .or_else(|| bytes_of(decl_symbol.size()))
        .ok_or_else(|| LoadError::Decl {
            path: path.to_path_buf(),
            problem: DeclError::BadMagic,
        })?;
    let decl = PluginDecl::from_bytes(decl_bytes).map_err(|problem| LoadError::Decl {
        path: path.to_path_buf(),
        problem,
    })?;
    Ok(PluginFile {
        path: path.to_path_buf(),
        sha256,
        decl,
        needed: needed_libraries(&elf),
        has_register: symbol(REGISTER_SYMBOL).is_some(),
    })
}

fn parse_shared_library<'a>(path: &Path, bytes: &'a [u8]) -> Result<ElfFile64<'a>, LoadError> {
    let not = |reason: String| LoadError::NotLibrary {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
        return Err(not("it is not an ELF file".to_string()));
    }
    let elf = ElfFile64::<object::Endianness>::parse(bytes).map_err(|e| {
        not(format!(
            "it is not a 64-bit ELF file this vlmkit can read ({e})"
        ))
    })?;
    if elf.kind() != object::ObjectKind::Dynamic {
        return Err(not(format!(
            "it is an ELF {:?} file, not a shared object",
            elf.kind()
        )));
    }
    Ok(elf)
}

fn needed_libraries(elf: &ElfFile64<'_>) -> Vec<String> {
    let endian = elf.endian();
    let data = elf.data();
    let sections = elf.elf_section_table();
    let Ok(Some((dynamic, strings_index))) = sections.dynamic(endian, data) else {
        return Vec::new();
    };
    let Ok(strings) = sections.strings(endian, data, strings_index) else {
        return Vec::new();
    };
    dynamic
        .iter()
        .filter(|d| d.d_tag.get(endian) == u64::from(object::elf::DT_NEEDED))
        .filter_map(|d| strings.get(d.d_val.get(endian) as u32).ok())
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect()
}

/// The libraries an ELF executable or shared library links (`DT_NEEDED`).
pub fn needed_libraries_of(path: &Path) -> Result<Vec<String>, LoadError> {
    let bytes = read_library(path)?;
    let elf =
        ElfFile64::<object::Endianness>::parse(&*bytes).map_err(|e| LoadError::NotLibrary {
            path: path.to_path_buf(),
            reason: format!("it is not a 64-bit ELF file this vlmkit can read ({e})"),
        })?;
    Ok(needed_libraries(&elf))
}

/// The libraries the running executable links (read once per process).
fn host_needed() -> Result<Vec<String>, LoadError> {
    static NEEDED: std::sync::OnceLock<Result<Vec<String>, String>> = std::sync::OnceLock::new();
    NEEDED
        .get_or_init(|| needed_libraries_of(Path::new("/proc/self/exe")).map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| LoadError::Host {
            reason: format!("cannot read its own executable: {e}"),
        })
}

fn is_std(library: &str) -> bool {
    library.starts_with("libstd-") && library.ends_with(".so")
}

impl Host {
    /// Checks that this process can share std and candle with plugins: the
    /// executable links `libvlmkit_api.so` and `libstd-*.so` dynamically, and the
    /// loaded API library is the one the executable was built against. Returns
    /// the executable's libstd.
    pub fn check(&self) -> Result<String, LoadError> {
        if !cfg!(target_os = "linux") {
            return Err(LoadError::Host {
                reason: "plugins are loaded on Linux only".to_string(),
            });
        }
        let needed = host_needed()?;
        if !needed.iter().any(|n| n == API_LIBRARY) {
            return Err(LoadError::Host {
                reason: format!(
                    "its executable does not link {API_LIBRARY} (it was built without the shared API library, so a plugin would bring a second candle)"
                ),
            });
        }
        let Some(std_library) = needed.iter().find(|n| is_std(n)) else {
            return Err(LoadError::Host {
                reason: "its executable links std statically, so a plugin would bring a second std"
                    .to_string(),
            });
        };
        if self.api.api_build_id != self.linked_build_id {
            return Err(LoadError::Host {
                reason: format!(
                    "the {API_LIBRARY} it loaded is not the one it was built against (a build with other features or another checkout replaced it; rebuild vlmkit)"
                ),
            });
        }
        Ok(std_library.clone())
    }
}

/// Where the running process loaded `libvlmkit_api.so` from (`/proc/self/maps`).
pub fn api_library_path() -> Result<PathBuf, LoadError> {
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| LoadError::Host {
        reason: format!("cannot read /proc/self/maps: {e}"),
    })?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| Path::new(path).file_name() == Some(std::ffi::OsStr::new(API_LIBRARY)))
        .map(PathBuf::from)
        .ok_or_else(|| LoadError::Host {
            reason: format!("{API_LIBRARY} is not loaded in this process"),
        })
}

/// How to build a plugin against the running vlmkit.
#[derive(Debug, Clone)]
pub struct PluginBuild {
    /// The compiler flags: this vlmkit's own `libvlmkit_api.so` as the
    /// `vlmkit_api` crate, the directory of the crates it bundles, and a run path
    /// so the plugin's own test binaries start.
    pub rustflags: Vec<String>,
    /// `libvlmkit_api.so`, for the plugin's build script to watch
    /// (`VLMKIT_API_LIBRARY`): cargo does not notice a changed `--extern` file,
    /// so without it a plugin would stay built against an older vlmkit.
    pub api_library: PathBuf,
}

/// The build settings of a plugin for the running vlmkit; `toolchain_libdir` is
/// where the toolchain's `libstd-*.so` lives.
pub fn plugin_build(toolchain_libdir: &Path) -> Result<PluginBuild, LoadError> {
    let rustflags = plugin_rustflags(toolchain_libdir)?;
    Ok(PluginBuild {
        rustflags,
        api_library: api_library_path()?,
    })
}

fn plugin_rustflags(toolchain_libdir: &Path) -> Result<Vec<String>, LoadError> {
    let api = api_library_path()?;
    let dir = api.parent().unwrap_or(Path::new("."));
    // The crates inside the library are compiled against through their
    // metadata in cargo's `deps` directory (loaded from `target/<profile>/` or
    // from `deps/` itself under `cargo test`).
    let deps = if dir.join("deps").is_dir() {
        dir.join("deps")
    } else if dir.file_name() == Some(std::ffi::OsStr::new("deps")) {
        dir.to_path_buf()
    } else {
        return Err(LoadError::NoBuildDir { library: api });
    };
    Ok(vec![
        "--extern".to_string(),
        format!("vlmkit_api={}", api.display()),
        "-L".to_string(),
        format!("dependency={}", deps.display()),
        "-C".to_string(),
        format!(
            "link-arg=-Wl,-rpath,{}:{}",
            dir.display(),
            toolchain_libdir.display()
        ),
    ])
}

/// The checks `vlmkit plugins inspect` reports, from the file alone: every
/// problem with the plugin, or none.
pub fn file_problems(file: &PluginFile, host: &Host) -> Result<Vec<String>, LoadError> {
    let std_library = host.check()?;
    let mut problems: Vec<String> = file
        .decl
        .mismatches(host.api)
        .iter()
        .map(ToString::to_string)
        .collect();
    problems.extend(linkage_problems(file, &std_library));
    if !file.has_register {
        problems.push(format!("it exports no `{REGISTER_SYMBOL}` function"));
    }
    Ok(problems)
}

fn linkage_problems(file: &PluginFile, std_library: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if !file.needed.iter().any(|n| n == API_LIBRARY) {
        problems.push(format!(
            "it does not link {API_LIBRARY}, so it carries its own candle (build it with `--extern vlmkit_api=…/{API_LIBRARY}`, not a crates.io or path dependency)"
        ));
    }
    match file.needed.iter().find(|n| is_std(n)) {
        Some(found) if found != std_library => problems.push(format!(
            "it links {found}, this vlmkit links {std_library} (another toolchain)"
        )),
        Some(_) => {}
        None => problems.push(format!(
            "it does not link {std_library}, so it carries its own std"
        )),
    }
    problems
}

/// Counts `dlopen` calls, so tests can prove refusals happen before one.
static OPENED: AtomicUsize = AtomicUsize::new(0);

/// How many libraries this process has opened so far.
pub fn libraries_opened() -> usize {
    OPENED.load(Ordering::SeqCst)
}

/// The library itself, or the first directory above it, that every user may
/// write: the file world-writable, or a world-writable directory without the
/// sticky bit (anyone may swap the file; `/tmp`'s sticky bit forbids it). As
/// ssh refuses keys others can write.
#[cfg(unix)]
fn writable_by_everyone(library: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    const OTHERS_WRITE: u32 = 0o002;
    const STICKY: u32 = 0o1000;
    let mode = |p: &Path| std::fs::metadata(p).ok().map(|m| m.mode());
    if mode(library).is_some_and(|m| m & OTHERS_WRITE != 0) {
        return Some(library.to_path_buf());
    }
    library
        .ancestors()
        .skip(1)
        .find(|dir| mode(dir).is_some_and(|m| m & OTHERS_WRITE != 0 && m & STICKY == 0))
        .map(Path::to_path_buf)
}

#[cfg(not(unix))]
fn writable_by_everyone(_library: &Path) -> Option<PathBuf> {
    None
}

/// Plugins loaded in this process, by canonical path. Their libraries live in
/// `LIBRARIES` until the process ends.
static LOADED: Mutex<Vec<Arc<LoadedPlugin>>> = Mutex::new(Vec::new());
#[cfg(unix)]
static LIBRARIES: Mutex<Vec<libloading::os::unix::Library>> = Mutex::new(Vec::new());

/// Loads a plugin (once per process and file), after every check from the file
/// has passed. `pins` maps plugin names to the sha256 their file must have.
pub fn load(
    path: &Path,
    host: &Host,
    pins: &std::collections::BTreeMap<String, String>,
) -> Result<Arc<LoadedPlugin>, LoadError> {
    let canonical = path.canonicalize().map_err(read_error(path))?;
    if let Some(writable) = writable_by_everyone(&canonical) {
        return Err(LoadError::Untrusted {
            path: canonical,
            writable,
        });
    }
    let file = read_plugin_file(&canonical)?;
    if let Some(expected) = pins.get(&file.decl.name()) {
        if !expected.eq_ignore_ascii_case(&file.sha256) {
            return Err(LoadError::Sha256 {
                path: canonical,
                expected: expected.to_string(),
                found: file.sha256,
            });
        }
    }
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(plugin) = loaded.iter().find(|p| p.path == canonical) {
        if plugin.sha256 != file.sha256 {
            return Err(LoadError::Open {
                path: canonical,
                reason: "the file changed since this process loaded it; restart vlmkit to load the new build".to_string(),
            });
        }
        return Ok(plugin.clone());
    }
    let std_library = host.check()?;
    let mismatches = file.decl.mismatches(host.api);
    if !mismatches.is_empty() {
        return Err(LoadError::Incompatible {
            path: canonical,
            name: file.decl.name(),
            mismatches,
        });
    }
    let problems = linkage_problems(&file, &std_library);
    if !problems.is_empty() {
        return Err(LoadError::Linkage {
            path: canonical,
            problems,
        });
    }
    if !file.has_register {
        return Err(LoadError::MissingRegister { path: canonical });
    }
    let factories = open_and_register(&canonical, &file)?;
    let plugin = Arc::new(LoadedPlugin {
        path: canonical,
        sha256: file.sha256,
        decl: file.decl,
        factories,
    });
    loaded.push(plugin.clone());
    Ok(plugin)
}

#[cfg(unix)]
fn open_and_register(
    path: &Path,
    file: &PluginFile,
) -> Result<Vec<Arc<dyn DynConnectorFactory>>, LoadError> {
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    let open_error = |e: libloading::Error| LoadError::Open {
        path: path.to_path_buf(),
        reason: error_chain(&e),
    };
    OPENED.fetch_add(1, Ordering::SeqCst);
    // SAFETY: every check that can be made without running the library's code has
    // passed: it was built by this compiler against this very API library and
    // links this process's std and candle. Its constructors run here.
    let library =
        unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }.map_err(open_error)?;
    // The library stays loaded whatever happens next: a failed registration may
    // have left code of it reachable (a panic payload, a thread-local destructor).
    let mut libraries = LIBRARIES.lock().unwrap_or_else(|e| e.into_inner());
    libraries.push(library);
    let library = libraries.last().expect("just pushed");

    let decl_name = format!("{PLUGIN_DECL_SYMBOL}\0");
    // SAFETY: the symbol is a `PluginDecl` static (checked from the file's bytes);
    // it is read, not called.
    let live = unsafe {
        let symbol = library
            .get::<*const PluginDecl>(decl_name.as_bytes())
            .map_err(open_error)?;
        std::ptr::read(symbol.into_raw() as *const PluginDecl)
    };
    if live != file.decl {
        return Err(LoadError::Changed {
            path: path.to_path_buf(),
        });
    }
    let register_name = format!("{REGISTER_SYMBOL}\0");
    // SAFETY: the declaration proves the function was compiled from the same API
    // source (build id) by the same compiler, so its Rust signature is this one.
    let register = unsafe {
        *library
            .get::<fn(&mut Registrar)>(register_name.as_bytes())
            .map_err(open_error)?
    };
    let mut registrar = Registrar::default();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| register(&mut registrar))).map_err(
        |payload| LoadError::Panicked {
            path: path.to_path_buf(),
            message: panic_message(payload.as_ref()),
        },
    )?;
    let factories = registrar.into_factories();
    if factories.is_empty() {
        return Err(LoadError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(factories)
}

#[cfg(not(unix))]
fn open_and_register(
    path: &Path,
    _file: &PluginFile,
) -> Result<Vec<Arc<dyn DynConnectorFactory>>, LoadError> {
    Err(LoadError::Host {
        reason: format!("plugins are loaded on Linux only ({})", path.display()),
    })
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_not_libraries_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.so");
        std::fs::write(&text, "not a library").unwrap();
        let err = read_plugin_file(&text).unwrap_err();
        assert!(matches!(err, LoadError::NotLibrary { .. }), "{err}");
        assert!(err
            .to_string()
            .contains("notes.so is not a shared library: it is not an ELF file"));

        let missing = dir.path().join("missing.so");
        let err = read_plugin_file(&missing).unwrap_err();
        assert!(err.to_string().starts_with("cannot read plugin "), "{err}");
    }

    #[test]
    fn an_executable_is_not_a_shared_library() {
        // This test binary is an ELF executable (PIE executables are `Dynamic`
        // too in the ELF header; then it fails on the missing declaration).
        let exe = std::env::current_exe().unwrap();
        let err = read_plugin_file(&exe).unwrap_err();
        assert!(
            matches!(
                err,
                LoadError::NotPlugin { .. } | LoadError::NotLibrary { .. }
            ),
            "{err}"
        );
    }

    #[test]
    fn the_sha256_is_the_files() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
