//! The assembled vision-language model: encoder → connector → language model, with
//! visual tokens spliced in at the image placeholder, the language-model loss over
//! supervised positions only, and KV-cached generation.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};

use crate::loss::{Average, BatchCounts, HostLoss, LossInput};
use crate::model::{
    Connector, ConnectorNeeds, ConnectorOutput, DecoderHooks, DecoderInput, KvCache, LanguageModel,
    Placement, TextContext, VisionEncoder,
};
use crate::ops::{self, IGNORE_INDEX};
use crate::rng::Rng;

/// One tokenised conversation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenSequence {
    /// Token ids, including the image placeholder.
    pub ids: Vec<u32>,
    /// Training target of each position ([`IGNORE_INDEX`] where not supervised); the
    /// loss at position `p` predicts `labels[p + 1]`.
    pub labels: Vec<i64>,
    /// Index in `ids` of the image placeholder, if the sequence has an image.
    pub image_at: Option<usize>,
    /// The user's query tokens (no template, no placeholder) for connectors that read text.
    pub query: Vec<u32>,
    /// The same query as text, for connectors with a sentence encoder of their own.
    pub query_text: String,
}

impl TokenSequence {
    /// Number of supervised targets.
    pub fn supervised(&self) -> usize {
        self.labels
            .iter()
            .skip(1)
            .filter(|&&l| l != IGNORE_INDEX)
            .count()
    }
}

/// A batch: normalised pixels (`B×3×H×W`) and the tokenised conversations.
#[derive(Debug, Clone)]
pub struct VlmBatch {
    pub pixels: Tensor,
    pub sequences: Vec<TokenSequence>,
    /// Per sample, the region its query refers to as the covered fraction of each
    /// cell of the connector's grounding grid (row-major); `None` for samples
    /// without a mask, and for every sample when nothing reads them.
    pub regions: Vec<Option<Vec<f32>>>,
}

/// The loss terms of one batch and what the connector exposed.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// Each term before weighting (f32 scalars): the host losses the stage
    /// names (each absent when the batch holds nothing it averages over) and the
    /// connector's own terms.
    pub terms: BTreeMap<String, Tensor>,
    /// What each term averages over.
    pub averages: BTreeMap<String, Average>,
    /// Number of supervised tokens in the batch.
    pub supervised_tokens: usize,
    /// Number of samples in the batch.
    pub samples: usize,
    /// Number of samples with a region mask.
    pub masked_samples: usize,
    pub maps: BTreeMap<String, Tensor>,
}

impl LossOutput {
    /// The counts of this batch that terms average over.
    pub fn counts(&self) -> BatchCounts {
        BatchCounts {
            supervised_tokens: self.supervised_tokens,
            samples: self.samples,
            masked_samples: self.masked_samples,
        }
    }

    /// How many items term `name` averages over in this batch.
    pub fn count_of(&self, name: &str) -> usize {
        self.averages
            .get(name)
            .map_or(0, |average| average.count(&self.counts()))
    }

    /// The training objective: `Σ weight · share(term) · term`. When a batch is
    /// split into parts, giving each part's term its share of what the whole
    /// batch's term averages over (see [`LossOutput::count_of`]) makes the parts'
    /// objectives sum to the whole batch's.
    pub fn objective(
        &self,
        weights: &BTreeMap<String, f64>,
        share: impl Fn(&str) -> f64,
    ) -> Result<Option<Tensor>> {
        let mut total: Option<Tensor> = None;
        for (name, value) in &self.terms {
            let w = weights.get(name).copied().unwrap_or(0.0);
            if w == 0.0 {
                continue;
            }
            let weighted = (value * (w * share(name)))?;
            total = Some(match total {
                Some(t) => (t + weighted)?,
                None => weighted,
            });
        }
        Ok(total)
    }
}

/// How to pick generated tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// `0` is greedy.
    pub temperature: f64,
    /// Nucleus sampling mass (`1.0` keeps every token).
    pub top_p: f64,
    pub seed: u64,
    /// Generation stops at any of these.
    pub stop_ids: Vec<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_ids: Vec::new(),
        }
    }
}

/// Encoder, connector and language model, wired together.
pub struct Vlm {
    pub vision: Box<dyn VisionEncoder>,
    pub connector: Box<dyn Connector>,
    pub llm: Box<dyn LanguageModel>,
    /// Hidden states handed to the connector (absolute, recipe order).
    pub layers: Vec<usize>,
    pub needs: ConnectorNeeds,
    /// Weight of each loss term by name (host losses, the connector's own
    /// terms); a term weighted 0 is computed and logged but not trained on.
    pub loss_weights: BTreeMap<String, f64>,
    /// The host losses [`Vlm::loss`] computes (those the stage's `losses` names).
    pub host_losses: Vec<Arc<dyn HostLoss>>,
    /// Where the weights live (batches are built there).
    pub device: Device,
    /// The dtype activations are computed in. Weights stay in the store's dtype
    /// (f32 masters) and are cast where they meet the activations; logits and
    /// losses are computed in f32.
    pub compute_dtype: DType,
}

/// Embedded, padded sequences ready for the decoder.
struct Prepared {
    embeds: Tensor,
    /// Per sample: which of the `S` positions hold a token.
    valid: Vec<Vec<bool>>,
    /// Per sample: spliced targets aligned with the `S` positions.
    labels: Vec<Vec<i64>>,
    positions: Tensor,
}

impl Vlm {
    fn device(&self, batch: &VlmBatch) -> Device {
        batch.pixels.device().clone()
    }

    /// Runs the vision encoder and the connector.
    pub fn encode(&self, pixels: &Tensor, sequences: &[TokenSequence]) -> Result<ConnectorOutput> {
        let features = self
            .vision
            .forward(&pixels.to_dtype(self.compute_dtype)?, &self.layers)?;
        let text = if self.needs.reads_text {
            Some(self.text_context(sequences, pixels.device())?)
        } else {
            None
        };
        let mut out = self.connector.forward(&features, text.as_ref())?;
        // An interleaved connector reads the image inside the decoder: samples
        // without one must not see the encoding of the blank pixels in their place.
        if sequences.iter().any(|s| s.image_at.is_none()) {
            if let Some(inner) = out.hooks.take() {
                let keep: Vec<f32> = sequences
                    .iter()
                    .map(|s| f32::from(u8::from(s.image_at.is_some())))
                    .collect();
                let keep = Tensor::from_vec(keep, (sequences.len(), 1, 1), pixels.device())?;
                out.hooks = Some(Arc::new(ImageSamplesOnly { inner, keep }));
            }
        }
        Ok(out)
    }

    /// Token embeddings in the compute dtype.
    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.llm.embed_tokens(ids)?.to_dtype(self.compute_dtype)
    }

    /// The query tokens embedded by the language model, right-padded, with a mask.
    pub fn text_context(
        &self,
        sequences: &[TokenSequence],
        device: &Device,
    ) -> Result<TextContext> {
        let t = sequences
            .iter()
            .map(|s| s.query.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let b = sequences.len();
        let mut ids = vec![0u32; b * t];
        let mut mask = vec![0f32; b * t];
        for (i, s) in sequences.iter().enumerate() {
            for (j, &id) in s.query.iter().enumerate() {
                ids[i * t + j] = id;
                mask[i * t + j] = 1.0;
            }
        }
        let ids = Tensor::from_vec(ids, (b, t), device)?;
        let embeds = self.embed(&ids)?;
        let mask = Tensor::from_vec(mask, (b, t), device)?.to_dtype(embeds.dtype())?;
        let queries = sequences.iter().map(|s| s.query_text.clone()).collect();
        Ok(TextContext {
            embeds,
            mask,
            queries,
        })
    }

    /// Embeds the sequences with the visual tokens in place of the placeholder.
    /// Padding is on the right for training and on the left for generation (so every
    /// sample's last token is at the same position).
    fn prepare(
        &self,
        sequences: &[TokenSequence],
        visual: Option<&Tensor>,
        pad_left: bool,
        device: &Device,
    ) -> Result<Prepared> {
        let b = sequences.len();
        let n_vis = match (visual, self.needs.placement) {
            (Some(v), Placement::Prefix) => v.dim(1)?,
            _ => 0,
        };
        let splice =
            |s: &TokenSequence| s.image_at.is_some() && self.needs.placement == Placement::Prefix;
        let lens: Vec<usize> = sequences
            .iter()
            .map(|s| match s.image_at {
                // The placeholder is replaced by the visual tokens (prefix) or dropped
                // (interleaved connectors read the image inside the decoder).
                Some(_) if splice(s) => s.ids.len() - 1 + n_vis,
                Some(_) => s.ids.len() - 1,
                None => s.ids.len(),
            })
            .collect();
        let max_len = lens.iter().copied().max().unwrap_or(0);
        // Every caller bounds its text (training cuts, generation refuses); this
        // holds the line for any other, rather than indexing past the rotary table.
        let max_positions = self.llm.info().max_positions;
        if max_len > max_positions {
            candle_core::bail!(
                "a sequence of {max_len} positions, text and visual tokens; the language model has {max_positions} (max_position_embeddings)"
            );
        }
        let t_text = sequences
            .iter()
            .map(|s| s.ids.len())
            .max()
            .unwrap_or(0)
            .max(1);
        // Row table: all text embeddings, then all visual tokens, then one zero row
        // for padding. Each output position picks a row: one index_select whose
        // backward (index_add) routes gradients to exactly the rows used.
        let mut text_ids = vec![0u32; b * t_text];
        for (i, s) in sequences.iter().enumerate() {
            text_ids[i * t_text..i * t_text + s.ids.len()].copy_from_slice(&s.ids);
            // The placeholder's row is never picked; a pretrained vocabulary may
            // not even have one for it.
            if let Some(at) = s.image_at {
                text_ids[i * t_text + at] = 0;
            }
        }
        let text_ids = Tensor::from_vec(text_ids, (b, t_text), device)?;
        let text = self.embed(&text_ids)?;
        let d = text.dim(2)?;
        let mut rows = vec![text.reshape((b * t_text, d))?];
        if n_vis > 0 {
            let v = visual.expect("n_vis > 0 implies visual tokens");
            rows.push(v.to_dtype(text.dtype())?.reshape((b * n_vis, d))?);
        }
        let pad_row = (b * t_text + b * n_vis) as u32;
        rows.push(Tensor::zeros((1, d), text.dtype(), device)?);
        let table = Tensor::cat(&rows, 0)?;

        let mut index = vec![pad_row; b * max_len];
        let mut valid = vec![vec![false; max_len]; b];
        let mut labels = vec![vec![IGNORE_INDEX; max_len]; b];
        let mut positions = vec![0u32; b * max_len];
        for (i, s) in sequences.iter().enumerate() {
            let offset = if pad_left { max_len - lens[i] } else { 0 };
            let mut p = offset;
            let mut put = |row: u32, label: i64, p: &mut usize| {
                index[i * max_len + *p] = row;
                valid[i][*p] = true;
                labels[i][*p] = label;
                positions[i * max_len + *p] = (*p - offset) as u32;
                *p += 1;
            };
            for (j, (&_id, &label)) in s.ids.iter().zip(&s.labels).enumerate() {
                if Some(j) == s.image_at {
                    if splice(s) {
                        for v in 0..n_vis {
                            put((b * t_text + i * n_vis + v) as u32, IGNORE_INDEX, &mut p);
                        }
                    }
                    continue;
                }
                put((i * t_text + j) as u32, label, &mut p);
            }
        }
        let index = Tensor::from_vec(index, b * max_len, device)?;
        let embeds = table.index_select(&index, 0)?.reshape((b, max_len, d))?;
        let positions = Tensor::from_vec(positions, (b, max_len), device)?;
        Ok(Prepared {
            embeds,
            valid,
            labels,
            positions,
        })
    }

    /// The decoder over whole prepared sequences: causal attention over their
    /// valid positions, filling `cache` when given.
    fn decode(
        &self,
        prepared: &Prepared,
        cache: Option<&mut KvCache>,
        hooks: Option<&dyn DecoderHooks>,
    ) -> Result<Tensor> {
        let s = prepared.embeds.dim(1)?;
        let mask = ops::causal_mask(&prepared.valid, 0, s, prepared.embeds.device())?
            .to_dtype(prepared.embeds.dtype())?;
        let input = DecoderInput {
            positions: prepared.positions.clone(),
            mask,
        };
        self.llm.forward(&prepared.embeds, &input, cache, hooks)
    }

    /// Next-token logits (f32) of each sample's last hidden state.
    fn next_token_logits(&self, last: &Tensor) -> Result<Vec<Vec<f32>>> {
        self.llm
            .logits(last)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()
    }

    /// Next-token logits (f32, `B×S×V`) at every position, the visual tokens in
    /// place of each placeholder, rows padded on the right to the longest (`S`).
    pub fn logits(&self, pixels: &Tensor, sequences: &[TokenSequence]) -> Result<Tensor> {
        let out = self.encode(pixels, sequences)?;
        let prepared = self.prepare(sequences, out.tokens.as_ref(), false, pixels.device())?;
        let hidden = self.decode(&prepared, None, out.hooks.as_deref())?;
        self.llm.logits(&hidden)?.to_dtype(DType::F32)
    }

    /// The loss terms of a batch: each of [`Vlm::host_losses`] and the
    /// connector's own terms. Weight them with [`LossOutput::objective`].
    pub fn loss(&self, batch: &VlmBatch) -> Result<LossOutput> {
        let device = self.device(batch);
        let out = self.encode(&batch.pixels, &batch.sequences)?;
        let prepared = self.prepare(&batch.sequences, out.tokens.as_ref(), false, &device)?;
        let hidden = self.decode(&prepared, None, out.hooks.as_deref())?;
        let mut maps = out.maps;
        if let Some(hooks) = &out.hooks {
            maps.extend(hooks.maps());
        }
        let input = LossInput {
            vlm: self,
            batch,
            hidden: &hidden,
            labels: &prepared.labels,
            valid: &prepared.valid,
            maps: &maps,
        };
        let mut terms = BTreeMap::new();
        let mut averages = BTreeMap::new();
        for loss in &self.host_losses {
            if let Some(value) = loss.compute(&input)? {
                terms.insert(loss.name().to_string(), value.to_dtype(DType::F32)?);
                averages.insert(loss.name().to_string(), loss.averages_over());
            }
        }
        for (name, value) in &out.aux_losses {
            terms.insert(name.clone(), value.to_dtype(DType::F32)?);
            averages.insert(name.clone(), Average::Samples);
        }
        let supervised_tokens = prepared
            .labels
            .iter()
            .map(|labels| {
                labels
                    .iter()
                    .skip(1)
                    .filter(|&&l| l != IGNORE_INDEX)
                    .count()
            })
            .sum();
        Ok(LossOutput {
            terms,
            averages,
            supervised_tokens,
            samples: batch.sequences.len(),
            masked_samples: batch.regions.iter().filter(|r| r.is_some()).count(),
            maps,
        })
    }

    /// Whether a term this model trains on averages over supervised tokens, so
    /// that a batch without one cannot be trained on.
    pub fn trains_on_tokens(&self) -> bool {
        self.host_losses.iter().any(|loss| {
            loss.averages_over() == Average::SupervisedTokens
                && self
                    .loss_weights
                    .get(loss.name())
                    .is_some_and(|&w| w != 0.0)
        })
    }

    /// Generates a continuation of each prompt (sequences ending where the answer
    /// starts). Returns the new token ids, without the stop token.
    pub fn generate(
        &self,
        pixels: &Tensor,
        prompts: &[TokenSequence],
        opts: &GenerateOptions,
    ) -> Result<Vec<Vec<u32>>> {
        let device = pixels.device().clone();
        let out = self.encode(pixels, prompts)?;
        let prepared = self.prepare(prompts, out.tokens.as_ref(), true, &device)?;
        let (b, s, _) = prepared.embeds.dims3()?;
        let hooks = out.hooks.as_deref();
        let mut cache = KvCache::new(self.llm.info().num_layers);
        let hidden = self.decode(&prepared, Some(&mut cache), hooks)?;
        let mut last = hidden.narrow(1, s - 1, 1)?.squeeze(1)?;
        let mut next_pos: Vec<u32> = prepared
            .valid
            .iter()
            .map(|v| v.iter().filter(|&&x| x).count() as u32)
            .collect();
        let mut valid = prepared.valid;
        let max_positions = self.llm.info().max_positions;
        let mut outputs = vec![Vec::new(); b];
        let mut done = vec![false; b];
        let mut rng = Rng::new(opts.seed);
        for _ in 0..opts.max_new_tokens {
            let logits = self.next_token_logits(&last)?;
            let step_ids = pick_step(&logits, opts, &mut rng, &mut done, &mut outputs);
            // The model has no position for another token: generation ends
            // there, as at `max_new_tokens`.
            let full = next_pos.iter().any(|&p| p as usize >= max_positions);
            if done.iter().all(|&d| d) || full {
                break;
            }
            let ids = Tensor::from_vec(step_ids, (b, 1), &device)?;
            let embeds = self.embed(&ids)?;
            for v in valid.iter_mut() {
                v.push(true);
            }
            let past = cache.len();
            let mask = ops::causal_mask(&valid, past, 1, &device)?.to_dtype(embeds.dtype())?;
            let positions = Tensor::from_vec(next_pos.clone(), (b, 1), &device)?;
            next_pos.iter_mut().for_each(|p| *p += 1);
            let hidden = self.llm.forward(
                &embeds,
                &DecoderInput { positions, mask },
                Some(&mut cache),
                hooks,
            )?;
            last = hidden.squeeze(1)?;
        }
        Ok(outputs)
    }
}

impl Vlm {
    /// [`Vlm::generate`] without the KV cache: every new token recomputes the whole
    /// sequence (the connector still runs once per image). Slow; the reference the
    /// cached path is checked against.
    pub fn generate_without_cache(
        &self,
        pixels: &Tensor,
        prompts: &[TokenSequence],
        opts: &GenerateOptions,
    ) -> Result<Vec<Vec<u32>>> {
        let device = pixels.device().clone();
        let out = self.encode(pixels, prompts)?;
        let hooks = out.hooks.as_deref();
        let b = prompts.len();
        let mut sequences = prompts.to_vec();
        let mut outputs = vec![Vec::new(); b];
        let mut done = vec![false; b];
        let mut rng = Rng::new(opts.seed);
        for _ in 0..opts.max_new_tokens {
            let prepared = self.prepare(&sequences, out.tokens.as_ref(), true, &device)?;
            let (_, s, _) = prepared.embeds.dims3()?;
            let hidden = self.decode(&prepared, None, hooks)?;
            let last = hidden.narrow(1, s - 1, 1)?.squeeze(1)?;
            let logits = self.next_token_logits(&last)?;
            let step_ids = pick_step(&logits, opts, &mut rng, &mut done, &mut outputs);
            for (sequence, id) in sequences.iter_mut().zip(step_ids) {
                sequence.ids.push(id);
                sequence.labels.push(IGNORE_INDEX);
            }
            if done.iter().all(|&d| d) || s >= self.llm.info().max_positions {
                break;
            }
        }
        Ok(outputs)
    }
}

/// Decoder hooks whose change to the hidden states applies only to the samples
/// that have an image (`keep`: `B×1×1`, 1 or 0).
struct ImageSamplesOnly {
    inner: Arc<dyn DecoderHooks>,
    keep: Tensor,
}

impl DecoderHooks for ImageSamplesOnly {
    fn before_layer(&self, layer: usize, hidden: &Tensor) -> Result<Tensor> {
        let changed = self.inner.before_layer(layer, hidden)?;
        let keep = self.keep.to_dtype(hidden.dtype())?;
        hidden + (changed - hidden)?.broadcast_mul(&keep)?
    }

    fn maps(&self) -> BTreeMap<String, Tensor> {
        self.inner.maps()
    }
}

/// Picks one token per sample from `logits` (`B` rows); a sample's output grows
/// until it picks a stop token, after which `done` marks it. Returns every
/// picked id (finished samples included: the batch decodes in lockstep).
fn pick_step(
    logits: &[Vec<f32>],
    opts: &GenerateOptions,
    rng: &mut Rng,
    done: &mut [bool],
    outputs: &mut [Vec<u32>],
) -> Vec<u32> {
    let mut ids = Vec::with_capacity(logits.len());
    for (i, row) in logits.iter().enumerate() {
        let id = pick_token(row, opts, rng);
        if !done[i] {
            if opts.stop_ids.contains(&id) {
                done[i] = true;
            } else {
                outputs[i].push(id);
            }
        }
        ids.push(id);
    }
    ids
}

/// Greedy, or temperature + nucleus sampling.
fn pick_token(logits: &[f32], opts: &GenerateOptions, rng: &mut Rng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            })
            .0 as u32
    };
    if opts.temperature <= 0.0 {
        return argmax();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i, ((v as f64 - max) / opts.temperature).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0.0;
    let mut cut = probs.len();
    for (k, p) in probs.iter().enumerate() {
        kept += p.1;
        if kept >= opts.top_p {
            cut = k + 1;
            break;
        }
    }
    let probs = &probs[..cut];
    let mass: f64 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.uniform() * mass;
    for p in probs {
        if u < p.1 {
            return p.0 as u32;
        }
        u -= p.1;
    }
    probs.last().map_or_else(argmax, |p| p.0 as u32)
}
