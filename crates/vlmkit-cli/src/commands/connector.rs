//! `vlmkit connector run`: a connector on its own, on tensors from a file, for
//! parity checks against a reference implementation (`shared/spec/parity.md`).

use std::path::PathBuf;

use anyhow::{Context, Result};
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
    /// Also write CCRA's consistency metrics on these inputs and weights (paper Table 2,
    /// shared/spec/analysis.md §1), before and after LPWCA, means over the batch, as JSON.
    #[arg(long, value_name = "FILE")]
    pub metrics: Option<PathBuf>,
}

pub fn run(args: ConnectorArgs) -> Result<()> {
    match args.command {
        ConnectorCommand::Run(args) => run_connector(args),
    }
}

fn run_connector(args: RunArgs) -> Result<()> {
    let mut overrides = args.overrides.clone();
    if args.metrics.is_some() {
        let kind = common::plan(&args.recipe, &args.overrides)?
            .model
            .connector
            .kind()
            .to_string();
        if kind != "ccra" {
            anyhow::bail!(
                "--metrics: CCRA's consistency metrics need a `ccra` connector; {} builds `{kind}`",
                args.recipe.display()
            );
        }
        overrides.push("connector.consistency_maps=true".into());
    }
    let plan = common::plan(&args.recipe, &overrides)?;
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
    if let Some(path) = &args.metrics {
        let json = consistency_report(&output.maps, inputs.features.grid)?;
        let mut text = serde_json::to_string_pretty(&json)?;
        text.push('\n');
        vlmkit_core::fsutil::write_atomic(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    let written = parity::outputs(&output)?;
    parity::save(&written, &args.out)?;
    println!("wrote {}:", args.out.display());
    for (name, tensor) in &written {
        println!("  {name} {:?}", tensor.dims());
    }
    Ok(())
}

/// CCRA's consistency metrics from its `consistency.*` maps: per sample, then
/// the mean over the batch (a metric undefined for one layer stays null).
fn consistency_report(
    maps: &std::collections::BTreeMap<String, candle_core::Tensor>,
    grid: (usize, usize),
) -> Result<serde_json::Value> {
    use vlmkit_eval::analysis::Consistency;
    let get = |name: &str| -> Result<Vec<Vec<f64>>> {
        let tensor = maps
            .get(name)
            .with_context(|| format!("the connector gave no `{name}` map"))?;
        let tensor = tensor.to_dtype(candle_core::DType::F64)?;
        let b = tensor.dim(0)?;
        Ok(tensor.reshape((b, ()))?.to_vec2::<f64>()?)
    };
    let final_maps = get("consistency.final")?;
    let samples = final_maps.len();
    let mut report = serde_json::Map::new();
    report.insert("samples".into(), samples.into());
    for stack in ["stack", "lp"] {
        let layers = get(&format!("consistency.{stack}"))?;
        let weights = get(&format!("consistency.{stack}_weights"))?;
        let n = final_maps[0].len();
        let per_sample: Vec<Consistency> = (0..samples)
            .map(|i| {
                let stacked: Vec<Vec<f64>> = layers[i].chunks(n).map(<[f64]>::to_vec).collect();
                Consistency::of(&stacked, &final_maps[i], &weights[i], grid)
            })
            .collect();
        let mean = |pick: &dyn Fn(&Consistency) -> Option<f64>| -> Option<f64> {
            let values: Vec<f64> = per_sample.iter().filter_map(pick).collect();
            (values.len() == per_sample.len() && !values.is_empty())
                .then(|| values.iter().sum::<f64>() / values.len() as f64)
        };
        report.insert(
            stack.into(),
            serde_json::json!({
                "js_avg": mean(&|c| c.js_avg),
                "cos_avg": mean(&|c| c.cos_avg),
                "drift": mean(&|c| c.drift),
                "std_patch": mean(&|c| Some(c.std_patch)),
                "js_to_final": mean(&|c| Some(c.js_to_final)),
                "cos_to_final": mean(&|c| Some(c.cos_to_final)),
                "tv_w": mean(&|c| c.tv_w),
                "entropy_w": mean(&|c| Some(c.entropy_w)),
            }),
        );
    }
    Ok(serde_json::json!({ "consistency": report }))
}
