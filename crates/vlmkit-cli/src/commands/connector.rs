//! `vlmkit connector run`: a connector on its own, on tensors from a file, for
//! parity checks against a reference implementation (`shared/spec/parity.md`).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use vlmkit_pipeline::parity::{self, StandaloneConnector, Weights};
use vlmkit_pipeline::select_device;

use crate::common;

#[derive(Debug, Args)]
pub struct ConnectorArgs {
    #[command(subcommand)]
    pub command: ConnectorCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConnectorCommand {
    /// Run the recipe's connector on tensors from a file and write what it produced.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The recipe whose `[connector]` (and model widths) to build.
    #[arg(long)]
    pub recipe: PathBuf,
    /// Override a recipe key (`KEY=VALUE`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Inputs (f32 safetensors): `vision` B×L×N×d_v, and as the connector reads
    /// them `vision_cls` B×L×d_v, `text` B×T×d_t, `text_mask` B×T.
    #[arg(long)]
    pub inputs: PathBuf,
    /// Where to write `tokens` and `maps.<name>` (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// The connector's weights under the spec's keys; without it they are
    /// initialised from the recipe seed, as training initialises them.
    #[arg(long, conflicts_with = "save_weights")]
    pub weights: Option<PathBuf>,
    /// Write the seeded weights here (to load them into a reference implementation).
    #[arg(long)]
    pub save_weights: Option<PathBuf>,
    /// `cpu` (default), `cuda`, `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(args: ConnectorArgs) -> Result<()> {
    match args.command {
        ConnectorCommand::Run(args) => run_connector(args),
    }
}

fn run_connector(args: RunArgs) -> Result<()> {
    let plan = common::plan(&args.recipe, &args.overrides)?;
    let device = select_device(&args.device)?;
    let weights = match &args.weights {
        Some(path) => Weights::File(path.clone()),
        None => Weights::Seeded,
    };
    let connector = StandaloneConnector::build(&plan, &weights, &device)?;
    if let Some(path) = &args.save_weights {
        connector.save_weights(path)?;
        println!("wrote weights to {}", path.display());
    }
    let inputs = parity::load_inputs(&plan, &args.inputs, &device)?;
    let output = connector.run(&inputs)?;
    let written = parity::outputs(&output)?;
    parity::save(&written, &args.out)?;
    println!("wrote {}:", args.out.display());
    for (name, tensor) in &written {
        println!("  {name} {:?}", tensor.dims());
    }
    Ok(())
}
