//! `vlmkit eval RUN_OR_CHECKPOINT`: per-family accuracy on the recipe's eval split.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use vlmkit_eval::{evaluate_and_save, AnswerMatch, EvalOptions};
use vlmkit_pipeline::data::ExampleSource;

use crate::common;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A run directory (its final model, else its newest checkpoint) or a checkpoint
    /// directory; or a recipe, whose model is built as training would start it
    /// (e.g. to score its pretrained language model with --scenes-as-text).
    pub model: PathBuf,
    /// Evaluate at most this many examples.
    #[arg(long)]
    pub samples: Option<u64>,
    /// Generation batch size (default: the recipe's `eval.batch_size`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: Option<u32>,
    /// Longest answer generated (default: the recipe's `eval.max_new_tokens`).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Where to write predictions.jsonl, report.json and accuracy.png (default: `<checkpoint>/eval`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Device to run on (default: the recipe's).
    #[arg(long)]
    pub device: Option<String>,
    /// Override a key of the model's saved recipe, e.g. `--set data.eval.samples=5000`
    /// or `--set 'data.eval.families={existence=1}'` (evaluation settings only).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Hand the model each scene's description as text instead of its image, with
    /// LLaVA's short-answer instruction (built-in data only): what the language
    /// model can answer when a connector hands it the whole scene in words.
    #[arg(long)]
    pub scenes_as_text: bool,
    /// Match replies in sentences, as a pretrained chat model gives them: yes/no by
    /// POPE's rule (a "no" or "not" anywhere means no), a choice by the one option
    /// named, an open answer when the reply contains it (default: the whole reply
    /// must be the answer).
    #[arg(long)]
    pub relaxed: bool,
    /// Answer a published benchmark's question file instead, as LLaVA-1.5's scripts
    /// do, writing LLaVA's answers file (and scoring it with --annotations): gqa,
    /// sqa, textvqa, vizwiz, mmbench, mmvet, seed, mmmu, mme, pope or vqav2.
    #[arg(long, value_name = "NAME", requires = "questions")]
    pub benchmark: Option<String>,
    /// The benchmark's question file as LLaVA distributes it (e.g.
    /// llava_gqa_testdev_balanced.jsonl, llava_test_CQM-A.json, mmbench_dev_20230712.tsv).
    #[arg(long, value_name = "FILE", requires = "benchmark")]
    pub questions: Option<PathBuf>,
    /// Where the question file's image paths start (default: its directory).
    #[arg(long, value_name = "DIR", requires = "benchmark")]
    pub images: Option<PathBuf>,
    /// The benchmark's release files: score the answers as `vlmkit score` does.
    #[arg(long, value_name = "PATH", requires = "benchmark")]
    pub annotations: Option<PathBuf>,
    /// Whose scoring rules, with --annotations.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "llava",
        requires = "benchmark"
    )]
    pub convention: vlmkit_benchmarks::Convention,
}

pub fn run(args: EvalArgs) -> Result<()> {
    if args.benchmark.is_some() {
        return run_benchmark(args);
    }
    if args.model.is_file() && args.out.is_none() {
        bail!(
            "{}: a recipe has no run directory to write the evaluation into; give --out DIR",
            args.model.display()
        );
    }
    let model = common::model_or_recipe(&args.model, args.device.as_deref(), &args.overrides)?;
    let data = model.plan.eval_data();
    let source: Box<dyn ExampleSource> = if args.scenes_as_text {
        match data.open_scenes_as_text()? {
            Some(scenes) => Box::new(scenes),
            None => bail!(
                "--scenes-as-text needs the built-in shapes data, whose scenes have descriptions; this recipe's [data.eval] is not `kind = \"shapes\"`"
            ),
        }
    } else {
        data.open()?
    };
    let defaults = EvalOptions::from_config(&model.plan.recipe.eval);
    let opts = EvalOptions {
        batch_size: args.batch_size.map_or(defaults.batch_size, |b| b as usize),
        max_new_tokens: args.max_new_tokens.unwrap_or(defaults.max_new_tokens),
        limit: args.samples.or(defaults.limit),
        answers: if args.relaxed {
            AnswerMatch::Relaxed
        } else {
            AnswerMatch::Exact
        },
        ..defaults
    };
    let out = args.out.unwrap_or_else(|| model.dir.join("eval"));
    common::writable_output_dir(&out)?;
    let first = opts.limit.filter(|&n| n < source.len());
    eprintln!(
        "evaluating {} on {}{}",
        model.dir.display(),
        source.describe(),
        first.map_or(String::new(), |n| format!(", the first {n}"))
    );
    let title = format!(
        "{}: accuracy per question family",
        model.plan.recipe.run.name
    );
    let report = evaluate_and_save(
        &model,
        source.as_ref(),
        &opts,
        &out,
        &title,
        |done, total| {
            eprint!("\r  {done}/{total}");
        },
    )?;
    eprintln!();
    print!("{}", report.table());
    if report.unanswered > 0 {
        eprintln!(
            "{} of the {} questions do not fit the model's positions: not asked, counted wrong (marked \"unanswered\" in predictions.jsonl)",
            report.unanswered, report.samples
        );
    }
    eprintln!(
        "wrote {}/{{predictions.jsonl, report.json, accuracy.png}}",
        out.display()
    );
    Ok(())
}

/// `vlmkit eval MODEL --benchmark NAME --questions FILE`: LLaVA's inference
/// protocol for the benchmark, its answers file, and its score.
fn run_benchmark(args: EvalArgs) -> Result<()> {
    let name = args.benchmark.as_deref().expect("called with --benchmark");
    let questions = args
        .questions
        .as_deref()
        .expect("clap requires --questions");
    if vlmkit_benchmarks::BenchmarkRegistry::default()
        .get(name)
        .is_none()
    {
        bail!(
            "--benchmark {name}: unknown; known: {}",
            vlmkit_benchmarks::BenchmarkRegistry::default()
                .names()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if args.scenes_as_text || args.relaxed {
        bail!(
            "--scenes-as-text and --relaxed apply to the built-in evaluation, not to --benchmark"
        );
    }
    if let (Some(n), Some(_)) = (args.samples, &args.annotations) {
        bail!(
            "--samples {n} answers part of {name}; its score needs every question, so drop --samples or --annotations"
        );
    }
    if args.model.is_file() && args.out.is_none() {
        bail!(
            "{}: a recipe has no run directory to write the answers into; give --out DIR",
            args.model.display()
        );
    }
    let model = common::model_or_recipe(&args.model, args.device.as_deref(), &args.overrides)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| model.dir.join(format!("eval-{name}")));
    let images = args.images.clone().unwrap_or_else(|| {
        questions
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    });
    let read: Vec<&Path> = [
        Some(questions),
        args.annotations.as_deref(),
        Some(images.as_path()),
    ]
    .into_iter()
    .flatten()
    .collect();
    common::refuse_overwriting_inputs("--out", &out.join("answers.jsonl"), &read)?;
    common::writable_output_dir(&out)?;
    let run = vlmkit_eval::benchmark::BenchmarkRun {
        name,
        questions,
        images: &images,
        annotations: args.annotations.as_deref(),
        convention: args.convention,
        batch_size: args
            .batch_size
            .map_or(model.plan.recipe.eval.batch_size, |b| b as usize),
        max_new_tokens: args.max_new_tokens,
        limit: args.samples.map(|n| n as usize),
    };
    eprintln!(
        "answering {name} ({}) with {}: batches of {}",
        questions.display(),
        model.dir.display(),
        run.batch_size
    );
    let result = vlmkit_eval::benchmark::run_benchmark(
        &model,
        &run,
        &out,
        &model.plan.recipe.run.name,
        |done, total| eprint!("\r  {done}/{total}"),
    )?;
    eprintln!();
    eprintln!(
        "wrote {} answers to {} ({:.1} s, {:.2} questions/s, up to {} new tokens)",
        result.answered,
        result.answers.display(),
        result.seconds,
        result.answered as f64 / result.seconds.max(1e-9),
        result.max_new_tokens
    );
    if let Some(first) = result.unanswered.first() {
        eprintln!(
            "{} questions do not fit the model's positions: not asked, answered \"\" (the first: {first})",
            result.unanswered.len()
        );
    }
    let Some(outcome) = result.outcome else {
        return Ok(());
    };
    let json = out.join("score.json");
    crate::commands::score::report_outcome(
        outcome,
        &result.answers,
        None,
        Some(&json),
        &read,
        args.convention,
    )?;
    eprintln!("wrote {}", json.display());
    Ok(())
}
