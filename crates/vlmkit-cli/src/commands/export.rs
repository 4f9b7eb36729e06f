//! `vlmkit export RUN --format llava-hf --out DIR`: a trained model in another
//! toolkit's format.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use vlmkit_pipeline::counts::thousands;
use vlmkit_pipeline::export::{export_llava_hf, ExportOptions};

use crate::common;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// transformers' `LlavaForConditionalGeneration` (the `mlp` connector, a CLIP
    /// or SigLIP tower, a LLaMA / Mistral / Qwen2 decoder).
    LlavaHf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoredDtype {
    F32,
    Bf16,
    F16,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A run directory (its final model, else its latest checkpoint) or a checkpoint directory.
    pub run: PathBuf,
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// The directory to write; it must not exist.
    #[arg(long)]
    pub out: PathBuf,
    /// The dtype the weights are stored in.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: StoredDtype,
    /// Largest weight file in bytes (`5GB`, `500MB` or a plain number); a bigger
    /// model is sharded with `model.safetensors.index.json`.
    #[arg(long, default_value = "5GB")]
    pub max_shard_size: String,
}

/// `5GB`, `500MB`, `64KB` (decimal units, as transformers' `max_shard_size`) or bytes.
fn parse_size(text: &str) -> Result<u64> {
    let upper = text.trim().to_ascii_uppercase();
    let (digits, unit) = match upper.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => upper.split_at(at),
        None => (upper.as_str(), ""),
    };
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => bail!("--max-shard-size {text}: unknown unit `{other}` (B, KB, MB or GB)"),
    };
    let n: u64 = digits.parse().map_err(|_| {
        anyhow::anyhow!(
            "--max-shard-size {text}: expected a whole number with an optional unit, e.g. 5GB"
        )
    })?;
    if n == 0 {
        bail!("--max-shard-size must be above zero");
    }
    Ok(n * scale)
}

pub fn run(args: ExportArgs) -> Result<()> {
    let options = ExportOptions {
        dtype: match args.dtype {
            StoredDtype::F32 => candle_core::DType::F32,
            StoredDtype::Bf16 => candle_core::DType::BF16,
            StoredDtype::F16 => candle_core::DType::F16,
        },
        max_shard_bytes: parse_size(&args.max_shard_size)?,
    };
    match args.format {
        ExportFormat::LlavaHf => {
            let summary = export_llava_hf(&args.run, &args.out, &common::components()?, &options)?;
            println!(
                "exported {} as LlavaForConditionalGeneration to {}",
                summary.checkpoint.display(),
                summary.dir.display()
            );
            println!(
                "  {} parameters in {} tensors ({}), {}",
                thousands(summary.parameters),
                summary.tensors,
                summary.weight_files.join(", "),
                format!("{:?}", args.dtype).to_lowercase()
            );
            println!(
                "  vision {} · text {} · <image> = id {}, {} visual tokens per image",
                summary.vision_model_type,
                summary.text_model_type,
                summary.image_token_index,
                summary.image_seq_length
            );
            let (before, after) = summary.vocab_rows;
            if after > before {
                println!(
                    "  embeddings grown from {before} to {after} rows so that <image> has one (zero rows; transformers embeds every id before placing the image features)"
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn shard_sizes_read_as_transformers_writes_them() {
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("500mb").unwrap(), 500_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("GB").is_err());
    }
}
