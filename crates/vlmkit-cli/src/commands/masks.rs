//! `vlmkit masks`: region masks for a LLaVA JSON file from Segment Anything,
//! prompted by the boxes or points its records give.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use vlmkit_data::LlavaDataset;
use vlmkit_masks::{label_dataset, SamTeacher};

#[derive(Debug, Args)]
pub struct MasksArgs {
    /// The LLaVA JSON file; records prompt SAM with `"box": [x0, y0, x1, y1]` or
    /// `"points": [[x, y], …]` (image pixels).
    pub json: PathBuf,
    /// Directory of a Segment Anything checkpoint in safetensors (`model.safetensors`,
    /// the original `segment_anything` weight names; ViT-B/L/H or MobileSAM).
    #[arg(long, value_name = "DIR")]
    pub sam: PathBuf,
    /// Image root (default: the JSON file's directory).
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Where the masks go, relative to the image root.
    #[arg(long, value_name = "DIR", default_value = "masks")]
    pub masks_dir: String,
    /// The JSON to write, each labelled record naming its mask (default: `<json>.masks.json`).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Replace masks records already have.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(args: MasksArgs) -> Result<()> {
    let dataset = LlavaDataset::open(&args.json, args.images.clone())?;
    let teacher = SamTeacher::load(&args.sam)?;
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = args
            .json
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "data".into());
        args.json.with_file_name(format!("{stem}.masks.json"))
    });
    eprintln!(
        "segmenting the prompted records of {} ({} records) with SAM {:?} from {}",
        args.json.display(),
        dataset.len(),
        teacher.encoder_size(),
        args.sam.display()
    );
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(dataset.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "[{bar:30.cyan/blue}] {pos}/{len} ({elapsed} < {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    });
    let every = (dataset.len() / 10).max(1);
    let summary = label_dataset(
        &dataset,
        &teacher,
        &args.masks_dir,
        &out,
        args.overwrite,
        |done, total| match &bar {
            Some(bar) => bar.set_position(done as u64),
            None if done % every == 0 || done == total => eprintln!("  {done}/{total}"),
            None => {}
        },
    )
    .with_context(|| format!("labelling {}", args.json.display()))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    println!(
        "{} masks written under {}; {} records kept their mask, {} had no image or prompt; records in {}",
        summary.labelled,
        dataset.image_root().join(&args.masks_dir).display(),
        summary.kept,
        summary.unprompted,
        out.display()
    );
    Ok(())
}
