//! `vlmkit params RECIPE`: parameter counts per component, trainable or frozen.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use vlmkit_core::params::ShapeRecorder;
use vlmkit_train::trainer::stage_trainable;

use crate::common;

#[derive(Debug, Args)]
pub struct ParamsArgs {
    /// The recipe (TOML).
    pub recipe: PathBuf,
    /// Override a recipe key (`KEY=VALUE`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Which stage's trainable set to report (0-based).
    #[arg(long, default_value_t = 0)]
    pub stage: usize,
    /// Print the table as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, serde::Serialize)]
struct Row {
    trainable: usize,
    frozen: usize,
    unused: usize,
}

pub fn run(args: ParamsArgs) -> Result<()> {
    let plan = common::inspect_plan(&args.recipe, &args.overrides)?;
    let Some(stage) = plan.recipe.stages.get(args.stage) else {
        anyhow::bail!(
            "the recipe has {} stage(s); there is no stage {}",
            plan.recipe.stages.len(),
            args.stage
        );
    };
    // Shapes only: nothing is allocated, so paper-scale recipes cost nothing.
    let recorder = ShapeRecorder::new();
    let vlm = plan.build_with(
        recorder.builder(),
        candle_core::Device::Cpu,
        BTreeMap::new(),
    )?;
    let unused = plan.unused_params(&vlm);
    let trainable = stage_trainable(stage, &unused);
    let groups = plan.connector.factory.param_groups();
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for (name, shape) in recorder.shapes() {
        let n: usize = shape.iter().product();
        let top = name.split('.').next().unwrap_or("").to_string();
        let mut keys = vec![top.clone()];
        if top == "connector" {
            let rel = &name["connector.".len()..];
            if let Some(g) = groups
                .iter()
                .find(|g| g.prefixes.iter().any(|p| rel.starts_with(p)))
            {
                keys.push(format!("connector/{}", g.name));
            }
        }
        keys.push("total".into());
        for key in keys {
            let row = rows.entry(key).or_default();
            if unused.iter().any(|u| name.starts_with(u.as_str())) {
                row.unused += n;
            } else if trainable(&name) {
                row.trainable += n;
            } else {
                row.frozen += n;
            }
        }
    }
    let order = |k: &str| match k {
        "vision" => 0,
        "connector" => 1,
        _ if k.starts_with("connector/") => 2,
        "llm" => 3,
        "total" => 9,
        _ => 5,
    };
    let mut keys: Vec<&String> = rows.keys().collect();
    keys.sort_by_key(|k| (order(k), k.to_string()));
    if args.json {
        let ordered: Vec<(&String, &Row)> = keys.iter().map(|k| (*k, &rows[*k])).collect();
        println!("{}", serde_json::to_string_pretty(&ordered)?);
        return Ok(());
    }
    println!("stage `{}` (trainable: {:?})", stage.name, stage.trainable);
    println!(
        "{:<24} {:>15} {:>15} {:>15} {:>15}",
        "component", "trainable", "frozen", "unused", "total"
    );
    let fmt = |n: usize| {
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    for k in keys {
        let r = &rows[k];
        let label = k
            .strip_prefix("connector/")
            .map_or(k.clone(), |g| format!("  {g}"));
        println!(
            "{label:<24} {:>15} {:>15} {:>15} {:>15}",
            fmt(r.trainable),
            fmt(r.frozen),
            fmt(r.unused),
            fmt(r.trainable + r.frozen + r.unused)
        );
    }
    Ok(())
}
