//! `vlmkit data export`: write a split of the built-in data as LLaVA JSON + PNGs.
//! `vlmkit data check`: find the records of a LLaVA JSON file training would skip.

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
    /// Read every record of a LLaVA JSON file, its image and mask as training does, and list the ones training would skip (exit status 1 when there are any).
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The LLaVA conversation JSON.
    pub json: PathBuf,
    /// Where its image and mask paths start (default: the JSON file's directory).
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Also tokenise each record for this recipe's model: too long to keep an
    /// answer is unusable, longer than its positions is cut (and counted).
    #[arg(long, value_name = "RECIPE")]
    pub recipe: Option<PathBuf>,
    /// Override a key of `--recipe`.
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "recipe")]
    pub overrides: Vec<String>,
    /// How many unusable records to list (all are counted).
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub show: usize,
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
    /// Write the eval split as a published benchmark's files instead — its question file
    /// in LLaVA's format, images and annotation files in the official release format — for
    /// `vlmkit eval --benchmark` and `vlmkit score`: pope, gqa, mme, sqa, mmbench, seed or
    /// textvqa (--count questions; MME counts images, two questions each).
    #[arg(long, value_name = "NAME")]
    pub benchmark: Option<vlmkit_data::BenchmarkFormat>,
}

pub fn run(args: DataArgs) -> Result<()> {
    match args.command {
        DataCommand::Check(args) => check(args),
        DataCommand::Export(args) => {
            let split = match args.split {
                _ if args.benchmark.is_some() => Split::Eval,
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
            if let Some(benchmark) = args.benchmark {
                return export_benchmark(benchmark, config, args.count, &args.out);
            }
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

/// `data export --benchmark`: the eval split as a benchmark's files, and the
/// commands that use them.
fn export_benchmark(
    benchmark: vlmkit_data::BenchmarkFormat,
    config: ShapesConfig,
    count: u64,
    out: &std::path::Path,
) -> Result<()> {
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        anyhow::bail!(
            "--out {} is not empty; a benchmark export goes into a directory of its own",
            out.display()
        );
    }
    let dataset = ShapesDataset::new(config, Split::Eval)?;
    let export = vlmkit_data::export_benchmark(&dataset, benchmark, count as usize, out)?;
    println!(
        "wrote {} {benchmark} questions from the built-in eval split to {}",
        export.count,
        out.display()
    );
    println!(
        "answer and score them:\n  vlmkit eval RUN --benchmark {benchmark} --questions {} --images {} --annotations {}",
        export.questions.display(),
        export.images.display(),
        export.annotations.display()
    );
    Ok(())
}

/// Why each record cannot be used, as training would find it.
fn check(args: CheckArgs) -> Result<()> {
    let collator = match &args.recipe {
        Some(recipe) => Some(
            crate::common::plan(recipe, &args.overrides)?
                .stage_batch_builder(0, candle_core::Device::Cpu)?
                .collator,
        ),
        None => None,
    };
    // The file's structure must hold (else nothing can be read); its records
    // are checked one by one.
    let dataset = vlmkit_data::LlavaDataset::open(&args.json, args.images.clone())?;
    let total = dataset.len();
    let mut unusable: Vec<String> = Vec::new();
    let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
    let mut cut = 0usize;
    let bar = indicatif::ProgressBar::new(total as u64);
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    for index in 0..total {
        bar.inc(1);
        let problem = match dataset.get(index) {
            Err(e) if e.is_record_problem() => Some(e.to_string()),
            Err(e) => return Err(e.into()),
            Ok(example) => match collator.as_ref().map(|c| c.sequence_cut(&example)) {
                Some(Err(e)) => Some(format!(
                    "{}: record {index} (id {:?}): {}",
                    args.json.display(),
                    example.id,
                    match e {
                        vlmkit_data::DataError::Unusable { reason, .. } => reason,
                        other => other.to_string(),
                    }
                )),
                Some(Ok((_, Some(_)))) => {
                    cut += 1;
                    None
                }
                _ => None,
            },
        };
        if let Some(problem) = problem {
            *reasons.entry(reason_kind(&problem)).or_default() += 1;
            unusable.push(problem);
        }
    }
    bar.finish_and_clear();
    println!(
        "{}: {total} records, {} usable, {} cannot be used{}",
        args.json.display(),
        total - unusable.len(),
        unusable.len(),
        if collator.is_some() {
            format!(", {cut} would be cut to the model's length")
        } else {
            String::new()
        }
    );
    for (kind, count) in &reasons {
        println!("  {count:>7}  {kind}");
    }
    for line in unusable.iter().take(args.show) {
        println!("{line}");
    }
    if unusable.len() > args.show {
        println!(
            "… and {} more (--show N lists more)",
            unusable.len() - args.show
        );
    }
    if unusable.is_empty() {
        Ok(())
    } else {
        // Listed above; the exit status says so to scripts.
        std::process::exit(1)
    }
}

/// A record problem without its record: what the counts group by.
fn reason_kind(problem: &str) -> String {
    let kinds = [
        ("does not exist", "image or mask missing"),
        ("corrupt image", "image corrupt"),
        ("corrupt mask", "mask corrupt"),
        ("placeholders", "more than one <image>"),
        (
            "but the record has no \"image\"",
            "<image> without an image",
        ),
        ("is an answer holding", "<image> in an answer"),
        ("has a \"mask\" but no \"image\"", "mask without an image"),
        ("but image", "mask size differs from its image's"),
        ("the model has room for", "too long for the model"),
        ("malformed JSON", "record is not valid JSON"),
    ];
    kinds
        .iter()
        .find(|(needle, _)| problem.contains(needle))
        .map_or("other (see the list)", |(_, kind)| kind)
        .to_string()
}
