//! `vlmkit data export`: write a split of the built-in data as LLaVA JSON + PNGs.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use vlmkit_data::export_split;
use vlmkit_data::shapes::{ShapesConfig, ShapesDataset, Split};
use vlmkit_recipe::Recipe;

#[derive(Debug, Args)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Write a split of the built-in shapes data as LLaVA conversation JSON, images and region masks.
    Export(ExportArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SplitArg {
    Train,
    Eval,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Which split.
    #[arg(long, value_enum, default_value = "train")]
    pub split: SplitArg,
    /// Number of examples.
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    /// Take the shapes settings from this recipe's data section (default: the built-in defaults).
    #[arg(long)]
    pub recipe: Option<PathBuf>,
}

pub fn run(args: DataArgs) -> Result<()> {
    match args.command {
        DataCommand::Export(args) => {
            let split = match args.split {
                SplitArg::Train => Split::Train,
                SplitArg::Eval => Split::Eval,
            };
            let config = match &args.recipe {
                Some(path) => {
                    let recipe = Recipe::load(path, &[])?;
                    let section = match split {
                        Split::Train => recipe.data_section("train"),
                        Split::Eval => vlmkit_pipeline::data::eval_settings(&recipe),
                    };
                    if section.get_str("kind").map_err(|e| recipe.error_for(e))? != Some("shapes") {
                        return Err(recipe.error_at(section.path(), "`data export` writes the built-in shapes data; this section is not `kind = \"shapes\"`").into());
                    }
                    section
                        .without(&["kind"])
                        .parse::<ShapesConfig>()
                        .map_err(|e| recipe.error_for(e))?
                }
                None => ShapesConfig::default(),
            };
            // Rewriting a split would leave the earlier export's images beside
            // the new conversation file; the other split may share the directory.
            let json = args.out.join(format!("{split}.json"));
            if json.exists() {
                anyhow::bail!(
                    "--out {} already holds an export of the {split} split ({}); export into another directory, or delete it first",
                    args.out.display(),
                    json.display()
                );
            }
            let ds = ShapesDataset::new(config, split)?;
            let summary = export_split(&ds, args.count, &args.out)?;
            println!(
                "wrote {} examples ({} with masks) to {}",
                summary.samples,
                summary.masks,
                summary.json_path.display()
            );
            Ok(())
        }
    }
}
