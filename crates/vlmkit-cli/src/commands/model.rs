//! `vlmkit model inspect DIR` and `vlmkit model forward DIR`: a Hugging Face
//! checkpoint as vlmkit reads it, and its hidden states on inputs from a file, so
//! that vlmkit can be held against any other implementation.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use vlmkit_core::hub;
use vlmkit_models::hf;
use vlmkit_train::counts::thousands;
use vlmkit_train::trainer::select_device;

#[derive(Debug, Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    pub command: ModelCommand,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Print the architecture, sizes, stored dtype and parameter count of a
    /// checkpoint directory, after loading it exactly.
    Inspect(InspectArgs),
    /// Run a checkpoint on inputs from a file and write every hidden state.
    Forward(ForwardArgs),
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A Hugging Face model directory (config.json and safetensors).
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// A Hugging Face model directory (config.json and safetensors).
    pub dir: PathBuf,
    /// Inputs (safetensors): `input_ids` B×T (any integer dtype) and optionally
    /// `attention_mask` B×T (1 keeps, 0 pads).
    #[arg(long)]
    pub inputs: PathBuf,
    /// Where to write `hidden_states.{i}` (transformers' indexing: 0 is the
    /// embeddings, the last is after the final norm) and `logits` (f32).
    #[arg(long)]
    pub out: PathBuf,
    /// `cpu` (default), `auto`, `cuda`, `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(args: ModelArgs) -> Result<()> {
    match args.command {
        ModelCommand::Inspect(args) => inspect(args),
        ModelCommand::Forward(args) => forward(args),
    }
}

fn inspect(args: InspectArgs) -> Result<()> {
    // Loaded in full: inspecting a checkpoint includes knowing that it loads exactly.
    let (checkpoint, _model) = hf::load_language_model(&args.dir, &candle_core::Device::Cpu)?;
    let cfg = &checkpoint.config;
    let stored = hub::stored_weights(&args.dir)?;
    let rows: Vec<(&str, String)> = vec![
        ("directory", args.dir.display().to_string()),
        ("model_type", checkpoint.model_type.clone()),
        ("architectures", checkpoint.architectures.join(", ")),
        ("read as", "vlmkit Llama (language model)".to_string()),
        ("vocab_size", cfg.vocab_size.to_string()),
        ("hidden_size", cfg.hidden_size.to_string()),
        ("intermediate_size", cfg.intermediate_size.to_string()),
        ("num_hidden_layers", cfg.num_hidden_layers.to_string()),
        (
            "attention heads",
            format!(
                "{} query, {} key/value, head_dim {}",
                cfg.num_attention_heads,
                cfg.kv_heads(),
                cfg.head_dim()
            ),
        ),
        (
            "attention biases",
            match (cfg.attention_bias, cfg.qkv_bias) {
                (true, _) => "q, k, v, o".to_string(),
                (false, true) => "q, k, v".to_string(),
                _ => "none".to_string(),
            },
        ),
        ("rope_theta", cfg.rope_theta.to_string()),
        ("rms_norm_eps", cfg.rms_norm_eps.to_string()),
        (
            "max_position_embeddings",
            cfg.max_position_embeddings.to_string(),
        ),
        ("tie_word_embeddings", cfg.tie_word_embeddings.to_string()),
        (
            "sliding_window",
            cfg.sliding_window
                .map_or("none".to_string(), |w| w.to_string()),
        ),
        ("stored dtype", stored.dtypes.join(", ")),
        (
            "parameters",
            format!(
                "{} in {} tensors",
                thousands(stored.elements),
                stored.tensors
            ),
        ),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in rows {
        println!("{key:<width$}  {value}");
    }
    Ok(())
}

fn forward(args: ForwardArgs) -> Result<()> {
    let device = select_device(&args.device)?;
    let (_, model) = hf::load_language_model(&args.dir, &device)?;
    let inputs = candle_core::safetensors::load(&args.inputs, &device)
        .with_context(|| format!("reading {}", args.inputs.display()))?;
    let Some(ids) = inputs.get("input_ids") else {
        bail!(
            "{}: no `input_ids` tensor (found: {})",
            args.inputs.display(),
            inputs.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    };
    if !ids.dtype().is_int() {
        bail!(
            "{}: `input_ids` must be integers, got {:?}",
            args.inputs.display(),
            ids.dtype()
        );
    }
    let out = hf::hidden_states(&model, ids, inputs.get("attention_mask"))?;
    let mut written = BTreeMap::new();
    for (i, h) in out.hidden_states.iter().enumerate() {
        written.insert(
            format!("hidden_states.{i}"),
            h.to_dtype(candle_core::DType::F32)?,
        );
    }
    written.insert(
        "logits".to_string(),
        out.logits.to_dtype(candle_core::DType::F32)?,
    );
    vlmkit_core::params::save_safetensors_atomic(&written, None, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("wrote {}:", args.out.display());
    for (name, tensor) in &written {
        println!("  {name} {:?}", tensor.dims());
    }
    Ok(())
}
