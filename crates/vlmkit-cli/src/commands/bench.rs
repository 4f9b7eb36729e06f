//! `vlmkit bench RECIPE`: the median time of each phase of a training step.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use vlmkit_train::bench::{bench, BenchOptions};

use crate::common;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The recipe (TOML).
    pub recipe: PathBuf,
    /// Override a recipe key (`KEY=VALUE`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Stage whose trainable set and batch size are measured (0-based).
    #[arg(long, default_value_t = 0)]
    pub stage: usize,
    /// Steps run before measuring.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Steps measured.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub steps: u32,
    /// Batch size (default: the stage's).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: Option<u32>,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let plan = common::plan(&args.recipe, &args.overrides)?;
    let report = bench(
        &plan,
        &BenchOptions {
            stage: args.stage,
            warmup: args.warmup,
            steps: args.steps as usize,
            batch_size: args.batch_size.map(|b| b as usize),
        },
    )?;
    let ms = |s: f64| s * 1e3;
    let pct = |s: f64| 100.0 * s / report.step_s;
    println!(
        "{} on {} ({} threads), batch {}, {} measured steps, {} trainable / {} frozen parameters",
        report.recipe,
        report.device,
        report.threads,
        report.batch_size,
        report.steps,
        report.trainable_params,
        report.frozen_params
    );
    println!("{:<12} {:>12} {:>8}", "phase", "median ms", "share");
    for (name, s) in [
        ("data", report.data_s),
        ("forward", report.forward_s),
        ("backward", report.backward_s),
        ("optimizer", report.optimizer_s),
        ("step", report.step_s),
    ] {
        println!("{name:<12} {:>12.2} {:>7.1}%", ms(s), pct(s));
    }
    println!(
        "throughput   {:>12.1} samples/s (one graph, serial)",
        report.samples_per_s
    );
    println!(
        "trainer step {:>12.2} ms: {} length-sorted parts on {} workers, {:.1} samples/s, {:.2}× the serial step",
        ms(report.sharded_step_s),
        report.parts,
        report.workers,
        report.sharded_samples_per_s,
        report.step_s / report.sharded_step_s
    );
    if let Some(mib) = report.peak_rss_mib {
        println!("peak memory  {mib:>12.1} MiB (resident)");
    }
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.json {
        std::fs::write(path, &json)?;
    }
    Ok(())
}
