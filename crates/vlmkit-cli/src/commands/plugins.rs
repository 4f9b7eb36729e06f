//! `vlmkit plugins list | inspect | config`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use vlmkit_plugin::loader::{self, API_LIBRARY};
use vlmkit_plugin::Registry;
use vlmkit_recipe::Recipe;

use crate::common;

#[derive(Debug, Args)]
pub struct PluginsArgs {
    #[command(subcommand)]
    pub command: PluginsCommand,
}

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// The connectors this vlmkit knows (built in, `--plugin`, a recipe's
    /// `[plugins]`), with their settings and where they come from.
    List(ListArgs),
    /// Read a plugin library's declaration and say whether this vlmkit can load
    /// it. Reads the file only: none of its code runs.
    Inspect(InspectArgs),
    /// Print the `.cargo/config.toml` that builds a plugin against this vlmkit.
    Config,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Also load the plugins this recipe names.
    #[arg(long, value_name = "RECIPE")]
    pub recipe: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The plugin library (`lib<name>.so`).
    pub lib: PathBuf,
}

pub fn run(args: PluginsArgs) -> Result<()> {
    match args.command {
        PluginsCommand::List(args) => list(args),
        PluginsCommand::Inspect(args) => inspect(&args.lib),
        PluginsCommand::Config => {
            print!("{}", cargo_config()?);
            Ok(())
        }
    }
}

fn list(args: ListArgs) -> Result<()> {
    let mut registry = common::registry()?;
    if let Some(path) = &args.recipe {
        let recipe = Recipe::load(path, &[])?;
        registry = registry
            .with_plugins(&recipe.plugins.paths, &recipe.plugins.sha256)
            .map_err(|(key, err)| recipe.error_at(&key, err.to_string()))?;
    }
    print!("{}", describe(&registry));
    Ok(())
}

/// Each connector: its kind and origin, what it is, its settings with defaults.
fn describe(registry: &Registry) -> String {
    let mut out = String::new();
    for (kind, registered) in registry.iter() {
        let factory = &registered.factory;
        let _ = writeln!(out, "{kind} ({})", registered.origin);
        let _ = writeln!(out, "  {}", factory.summary());
        let defaults = factory.defaults();
        if defaults.is_empty() {
            let _ = writeln!(out, "  settings: none");
        } else {
            let settings: Vec<String> = defaults
                .iter()
                .map(|(key, value)| format!("{key} = {value}"))
                .collect();
            let _ = writeln!(out, "  settings: {}", settings.join(", "));
        }
    }
    out
}

fn inspect(lib: &Path) -> Result<()> {
    let file = loader::read_plugin_file(lib)?;
    let mut rows = file.decl.rows();
    rows.push(("sha256", file.sha256.clone()));
    rows.push(("links", file.needed.join(", ")));
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
    println!("{}", lib.display());
    for (label, value) in &rows {
        println!("  {label:<width$}  {value}");
    }
    let problems = loader::file_problems(&file, &common::host())?;
    if problems.is_empty() {
        println!("compatible: this vlmkit can load it (inspecting did not load it; loading runs its code)");
        return Ok(());
    }
    let mut message = format!("{} cannot be loaded by this vlmkit:", lib.display());
    for problem in &problems {
        let _ = write!(message, "\n  - {problem}");
    }
    bail!("{message}\n  {}", loader::REBUILD)
}

/// The `.cargo/config.toml` a plugin crate builds with.
pub fn cargo_config() -> Result<String> {
    let build = loader::plugin_build(Path::new(env!("VLMKIT_TOOLCHAIN_LIBDIR")))?;
    let quote = |text: &str| toml::Value::String(text.to_string()).to_string();
    let flags: Vec<String> = build.rustflags.iter().map(|f| quote(f)).collect();
    Ok(format!(
        "# Builds this plugin against the vlmkit at {} (written by `vlmkit plugins config`).\n\
         # The plugin links that vlmkit's own {API_LIBRARY}, so both share one std and\n\
         # one candle. A RUSTFLAGS variable would override these flags: leave it unset.\n\
         [build]\n\
         rustflags = [\n    {},\n]\n\n\
         # Watched by build.rs: a rebuilt vlmkit rebuilds the plugin.\n\
         [env]\n\
         VLMKIT_API_LIBRARY = {}\n",
        build
            .api_library
            .parent()
            .unwrap_or(Path::new("."))
            .display(),
        flags.join(",\n    "),
        quote(&build.api_library.display().to_string())
    ))
}
