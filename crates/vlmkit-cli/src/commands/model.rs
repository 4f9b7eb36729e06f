//! `vlmkit model inspect DIR` and `vlmkit model forward DIR`: a Hugging Face
//! checkpoint as vlmkit reads it, and its hidden states on inputs from a file, so
//! that vlmkit can be held against any other implementation.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use vlmkit_core::hub;
use vlmkit_data::processor::ImageProcessor;
use vlmkit_models::{gguf, hf};
use vlmkit_pipeline::counts::thousands;
use vlmkit_pipeline::select_device;

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
    /// Turn images into `pixel_values` as the directory's
    /// `preprocessor_config.json` says (CLIP or SigLIP, Pillow's bicubic resize).
    Preprocess(PreprocessArgs),
}

#[derive(Debug, Args)]
pub struct PreprocessArgs {
    /// A Hugging Face directory with a `preprocessor_config.json`.
    pub dir: PathBuf,
    /// Images (PNG or JPEG), one batch row each, in order; all must come out the same size.
    #[arg(long = "image", required = true)]
    pub images: Vec<PathBuf>,
    /// Pad each image to a square with the mean colour first, as LLaVA-1.5
    /// fine-tuning does (`image_aspect_ratio = "pad"`).
    #[arg(long)]
    pub pad_to_square: bool,
    /// Where to write `pixel_values` (B×3×H×W, f32), ready for `vlmkit model forward`.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A Hugging Face model directory (config.json and safetensors): a language
    /// model (LLaMA, Mistral, Qwen2) or a vision encoder (CLIP, SigLIP, ConvNeXt);
    /// or a LLaMA-family GGUF file.
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// A Hugging Face model directory (config.json and safetensors), a GGUF file,
    /// or a vlmkit run or checkpoint directory (the whole vision-language model).
    /// A LLaVA directory runs as its language model.
    pub dir: PathBuf,
    /// Inputs (safetensors): for a language model `input_ids` B×T (any integer
    /// dtype) and optionally `attention_mask` B×T (1 keeps, 0 pads); for a vision
    /// encoder `pixel_values` B×C×H×W (already normalised); for a run both, each
    /// image a run of `<image>` ids as long as the visual tokens (as transformers'
    /// LlavaProcessor writes) or one `<image>` id.
    #[arg(long)]
    pub inputs: PathBuf,
    /// Where to write `hidden_states.{i}` in transformers' indexing and layout (for a
    /// language model 0 is the embeddings and the last is after the final norm,
    /// plus `logits`; for a vision encoder 0 is the embeddings), all f32; for a run,
    /// `logits` at every position with the visual tokens in place.
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
        ModelCommand::Preprocess(args) => preprocess(args),
    }
}

/// Whether `dir` holds a vision encoder (else it is read as a language model).
fn is_vision(dir: &std::path::Path) -> Result<bool> {
    if gguf::is_model_file(dir) {
        return Ok(false);
    }
    let config = hub::read_config(dir)?;
    Ok(config
        .get("model_type")
        .and_then(serde_json::Value::as_str)
        .is_some_and(hf::vision::is_vision_model_type))
}

fn inspect(args: InspectArgs) -> Result<()> {
    let rows = if is_vision(&args.dir)? {
        inspect_vision(&args.dir)?
    } else {
        inspect_language(&args.dir)?
    };
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in rows {
        println!("{key:<width$}  {value}");
    }
    Ok(())
}

fn stored_rows(dir: &std::path::Path) -> Result<Vec<(&'static str, String)>> {
    let (dtypes, elements, tensors) = if gguf::is_model_file(dir) {
        let file = gguf::GgufFile::open(dir)?;
        let (elements, tensors) = file.stored();
        (file.file_type(), elements, tensors)
    } else {
        let stored = hub::stored_weights(dir)?;
        (stored.dtypes.join(", "), stored.elements, stored.tensors)
    };
    Ok(vec![
        ("stored dtype", dtypes),
        (
            "parameters",
            format!("{} in {tensors} tensors", thousands(elements)),
        ),
    ])
}

fn inspect_vision(dir: &std::path::Path) -> Result<Vec<(&'static str, String)>> {
    // Loaded in full: inspecting a checkpoint includes knowing that it loads exactly.
    let (checkpoint, encoder) = hf::vision::load_vision_model(dir, &candle_core::Device::Cpu)?;
    let info = encoder.info();
    let mut rows: Vec<(&str, String)> = vec![
        ("directory", dir.display().to_string()),
        ("model_type", checkpoint.model_type.clone()),
        ("architectures", checkpoint.architectures.join(", ")),
    ];
    rows.extend(checkpoint.config.describe());
    rows.extend([
        (
            "hidden states",
            format!("{} (hs[0] is the embeddings)", info.depth + 1),
        ),
        (
            "normalisation",
            format!("mean {:?}, std {:?}", info.image_mean, info.image_std),
        ),
    ]);
    rows.extend(stored_rows(dir)?);
    Ok(rows)
}

fn inspect_language(dir: &std::path::Path) -> Result<Vec<(&'static str, String)>> {
    // Loaded in full: inspecting a checkpoint includes knowing that it loads exactly.
    let (checkpoint, _model) = hf::load_language_model(dir, &candle_core::Device::Cpu)?;
    let quantised = gguf::is_model_file(dir);
    let cfg = &checkpoint.config;
    let mut rows: Vec<(&str, String)> = vec![
        (
            if quantised { "file" } else { "directory" },
            dir.display().to_string(),
        ),
        ("model_type", checkpoint.model_type.clone()),
        ("architectures", checkpoint.architectures.join(", ")),
        (
            "read as",
            format!(
                "vlmkit Llama (language model){}",
                if quantised {
                    ", dequantised to f32"
                } else {
                    ""
                }
            ),
        ),
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
    ];
    rows.extend(stored_rows(dir)?);
    Ok(rows)
}

/// Whether `dir` is a vlmkit run or checkpoint (it keeps the recipe it was trained with).
fn is_run(dir: &std::path::Path) -> bool {
    dir.join(vlmkit_pipeline::checkpoint::RECIPE_FILE).is_file()
}

fn forward(args: ForwardArgs) -> Result<()> {
    let device = select_device(&args.device)?;
    crate::common::refuse_overwriting_inputs("--out", &args.out, &[&args.dir, &args.inputs])?;
    let inputs = candle_core::safetensors::load(&args.inputs, &device)
        .with_context(|| format!("reading {}", args.inputs.display()))?;
    if is_run(&args.dir) {
        return forward_run(&args, &inputs);
    }
    let mut written = BTreeMap::new();
    if is_vision(&args.dir)? {
        let (checkpoint, encoder) = hf::vision::load_vision_model(&args.dir, &device)?;
        let Some(pixels) = inputs.get("pixel_values") else {
            bail!(
                "{}: no `pixel_values` tensor (found: {})",
                args.inputs.display(),
                inputs.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        };
        let pixels = pixels.to_dtype(candle_core::DType::F32)?;
        let states =
            hf::vision::vision_hidden_states(encoder.as_ref(), &*checkpoint.config, &pixels)?;
        for (i, h) in states.into_iter().enumerate() {
            written.insert(format!("hidden_states.{i}"), h);
        }
        return write_outputs(&written, &args.out);
    }
    let (_, model) = hf::load_language_model(&args.dir, &device)?;
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
    write_outputs(&written, &args.out)
}

/// A trained model on `input_ids` and `pixel_values`, as transformers' LLaVA
/// reads them: each row's image is a run of `<image>` ids as long as the visual
/// tokens (what `LlavaProcessor` writes), or one `<image>` id; its logits cover the
/// sequence with the visual tokens in place.
fn forward_run(
    args: &ForwardArgs,
    inputs: &std::collections::HashMap<String, candle_core::Tensor>,
) -> Result<()> {
    let model = vlmkit_pipeline::load_model(
        &args.dir,
        &crate::common::components()?,
        Some(&args.device),
        &[],
    )?;
    let plan = &model.plan;
    if model.vlm.needs.reads_text {
        bail!(
            "the connector `{}` reads the question, which input_ids do not mark; ask this model with `vlmkit infer`",
            plan.model.connector.kind()
        );
    }
    let Some(ids) = inputs.get("input_ids") else {
        bail!(
            "{}: no `input_ids` tensor (found: {})",
            args.inputs.display(),
            inputs.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    };
    if !ids.dtype().is_int() || ids.rank() != 2 {
        bail!(
            "{}: `input_ids` must be integers of shape B×T, got {:?} {:?}",
            args.inputs.display(),
            ids.dtype(),
            ids.dims()
        );
    }
    if let Some(mask) = inputs.get("attention_mask") {
        if mask
            .to_dtype(candle_core::DType::F32)?
            .min_all()?
            .to_scalar::<f32>()?
            == 0.0
        {
            bail!("{}: padded rows (an attention_mask with zeros) are not read for a trained model; give rows of equal length", args.inputs.display());
        }
    }
    let image_id = plan.tokenizer()?.image;
    let sequences = ids
        .to_dtype(candle_core::DType::I64)?
        .to_vec2::<i64>()?
        .iter()
        .enumerate()
        .map(|(r, row)| {
            llava_row(row, image_id, plan.model.visual_tokens)
                .map_err(|e| anyhow::anyhow!("row {r} of input_ids: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let size = plan.model.env.vision.image_size;
    let pixels = match inputs.get("pixel_values") {
        Some(p) => p.to_dtype(candle_core::DType::F32)?,
        None if sequences.iter().all(|s| s.image_at.is_none()) => candle_core::Tensor::zeros(
            (sequences.len(), 3, size, size),
            candle_core::DType::F32,
            &model.vlm.device,
        )?,
        None => bail!(
            "{}: input_ids hold `<image>` but there is no `pixel_values` tensor",
            args.inputs.display()
        ),
    };
    if pixels.dims() != [sequences.len(), 3, size, size] {
        bail!(
            "pixel_values of shape {:?} do not fit input_ids of shape {:?} and this model's {size}×{size} images (want {:?})",
            pixels.dims(),
            ids.dims(),
            [sequences.len(), 3, size, size]
        );
    }
    let logits = model.vlm.logits(&pixels, &sequences)?;
    let written = BTreeMap::from([("logits".to_string(), logits)]);
    write_outputs(&written, &args.out)
}

/// One row of transformers-style `input_ids` as a vlmkit sequence: an image is
/// one `<image>` id, or the run of `visual_tokens` ids `LlavaProcessor` expands
/// it to (kept as one placeholder).
fn llava_row(
    row: &[i64],
    image_id: u32,
    visual_tokens: usize,
) -> std::result::Result<vlmkit_core::TokenSequence, String> {
    let ids = row
        .iter()
        .map(|&id| u32::try_from(id).map_err(|_| format!("token id {id} is out of range")))
        .collect::<std::result::Result<Vec<u32>, _>>()?;
    let at: Vec<usize> = (0..ids.len()).filter(|&i| ids[i] == image_id).collect();
    let ids = match at.as_slice() {
        [] | [_] => ids,
        [first, .., last] if at.len() == visual_tokens && last - first + 1 == at.len() => {
            [&ids[..=*first], &ids[last + 1..]].concat()
        }
        _ => {
            return Err(format!(
                "{} `<image>` ids ({image_id}); an image is one id, or a run of {visual_tokens} (the visual tokens)",
                at.len()
            ))
        }
    };
    Ok(vlmkit_core::TokenSequence {
        labels: vec![vlmkit_core::ops::IGNORE_INDEX; ids.len()],
        image_at: at.first().copied(),
        ids,
        ..Default::default()
    })
}

fn preprocess(args: PreprocessArgs) -> Result<()> {
    let mut processor = ImageProcessor::from_preprocessor_config(&args.dir)?;
    if args.pad_to_square {
        processor = processor.with_pad_to_square();
    }
    let mut values = Vec::new();
    let mut size: Option<(usize, usize)> = None;
    for path in &args.images {
        let image = image::open(path)
            .with_context(|| format!("cannot read the image {}", path.display()))?
            .to_rgb8();
        let (pixels, hw) = processor.pixel_values(&image);
        match size {
            Some(first) if first != hw => bail!(
                "{} gives {}×{} pixels, the first image {}×{}: the processor does not crop to one size",
                path.display(),
                hw.0,
                hw.1,
                first.0,
                first.1
            ),
            _ => size = Some(hw),
        }
        values.extend(pixels);
    }
    let (h, w) = size.expect("at least one image");
    let tensor = candle_core::Tensor::from_vec(
        values,
        (args.images.len(), 3, h, w),
        &candle_core::Device::Cpu,
    )?;
    let written = BTreeMap::from([("pixel_values".to_string(), tensor)]);
    write_outputs(&written, &args.out)
}

fn write_outputs(
    written: &BTreeMap<String, candle_core::Tensor>,
    out: &std::path::Path,
) -> Result<()> {
    vlmkit_core::params::save_safetensors_atomic(written, None, out)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}:", out.display());
    for (name, tensor) in written {
        println!("  {name} {:?}", tensor.dims());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::llava_row;

    #[test]
    fn an_expanded_image_becomes_one_placeholder() {
        let expanded = llava_row(&[1, 9, 4, 4, 4, 7], 4, 3).unwrap();
        assert_eq!(
            (expanded.ids, expanded.image_at),
            (vec![1, 9, 4, 7], Some(2))
        );
        let single = llava_row(&[1, 4, 7], 4, 3).unwrap();
        assert_eq!((single.ids, single.image_at), (vec![1, 4, 7], Some(1)));
        assert_eq!(llava_row(&[1, 7], 4, 3).unwrap().image_at, None);
        for bad in [&[4, 4, 7][..], &[4, 1, 4, 4]] {
            assert!(llava_row(bad, 4, 3).unwrap_err().contains("`<image>` ids"));
        }
        assert!(llava_row(&[-1], 4, 3).unwrap_err().contains("out of range"));
    }
}
