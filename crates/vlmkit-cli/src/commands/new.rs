//! `vlmkit new connector NAME [--out DIR]`: a plugin crate that builds against
//! this vlmkit, with a connector, its gradient test, a recipe and a README.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use crate::commands::plugins::cargo_config;

#[derive(Debug, Args)]
pub struct NewArgs {
    #[command(subcommand)]
    pub what: NewCommand,
}

#[derive(Debug, Subcommand)]
pub enum NewCommand {
    /// A connector plugin crate: `cargo build --release` there, then `vlmkit train
    /// recipe.toml`.
    Connector(ConnectorArgs),
}

#[derive(Debug, Args)]
pub struct ConnectorArgs {
    /// The connector's kind, also the crate name: lowercase letters, digits and
    /// `-`, starting with a letter (e.g. `my-fusion`).
    pub name: String,
    /// Where to create the crate (default: `./NAME`). Must not exist, or be empty.
    #[arg(long, value_name = "DIR", visible_alias = "dir")]
    pub out: Option<PathBuf>,
}

const TEMPLATE: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../templates/connector/Cargo.toml.tmpl"),
    ),
    (
        "src/lib.rs",
        include_str!("../../templates/connector/src/lib.rs.tmpl"),
    ),
    (
        "build.rs",
        include_str!("../../../../examples/connector-plugin/build.rs"),
    ),
    (
        "recipe.toml",
        include_str!("../../templates/connector/recipe.toml.tmpl"),
    ),
    (
        "README.md",
        include_str!("../../templates/connector/README.md.tmpl"),
    ),
    (
        ".gitignore",
        include_str!("../../templates/connector/gitignore.tmpl"),
    ),
    (
        "base-shapes.toml",
        include_str!("../../../../recipes/base-shapes.toml"),
    ),
];

pub fn run(args: NewArgs) -> Result<()> {
    match args.what {
        NewCommand::Connector(args) => new_connector(&args),
    }
}

fn new_connector(args: &ConnectorArgs) -> Result<()> {
    check_name(&args.name)?;
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} already exists and is not empty; choose another `--out`",
            dir.display()
        );
    }
    // Written first: it fails when this vlmkit cannot host plugins at all.
    let config = cargo_config()?;
    let lib = args.name.replace('-', "_");
    let fill = |text: &str| {
        text.replace("{{crate}}", &args.name)
            .replace("{{kind}}", &args.name)
            .replace("{{lib}}", &lib)
    };
    let mut files: Vec<(&str, String)> = TEMPLATE
        .iter()
        .map(|(path, text)| (*path, fill(text)))
        .collect();
    files.push((".cargo/config.toml", config));
    for (path, text) in &files {
        write_new(&dir.join(path), text)?;
    }
    eprintln!(
        "created the connector plugin `{}` in {}\nnext:\n  cd {}\n  cargo build --release\n  vlmkit train recipe.toml",
        args.name,
        dir.display(),
        dir.display()
    );
    Ok(())
}

fn write_new(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// A connector kind that is also a valid crate name and library file name.
fn check_name(name: &str) -> Result<()> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !valid {
        bail!(
            "`{name}` cannot name a connector crate: use lowercase letters, digits and `-`, starting with a letter (e.g. `my-fusion`)"
        );
    }
    if crate::common::builtin_registry().get(name).is_some() {
        bail!("`{name}` is a built-in connector's kind; a plugin cannot take it");
    }
    Ok(())
}
