//! IGVA-like connector: instruction-guided aggregation of vision layer groups.
//!
//! The blocks fall into groups (default four equal ones); each group's mean
//! hidden state gives a class descriptor `c_k` and patch features `P_k`. A query
//! built from the instruction attends over the descriptors through a small
//! transformer, and a softmax turns it into group weights `w`:
//! `F = Σ_k w_k P_k`, `X = concat_ch[hs[-2], F]`, `Y = proj(X)`. An entropy
//! bonus `-λ·H(w)` is reported as the auxiliary loss `entropy`. The math follows
//! `shared/spec/connectors.md` § igva; the spec leaves the weight names open,
//! and they are listed on [`IgvaConnector`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vlmkit_plugin::candle_core::Result as TensorResult;
use vlmkit_plugin::prelude::*;
use vlmkit_plugin::BuildError;
pub use vlmkit_text::Pooling;
use vlmkit_text::SentenceEncoder;

/// The layer groups: a count of equal groups of blocks `hs[1..=L]`, or the groups
/// themselves as lists of HF indices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Groups {
    Equal(usize),
    Listed(Vec<Vec<i64>>),
}

/// How the group weights are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    /// The instruction-guided allocator (the method).
    Learned,
    /// Uniform weights, for an alignment stage before the allocator trains.
    Mean,
}

/// A frozen sentence encoder for the text vector, in place of the mean query
/// embedding (the published method uses all-mpnet-base-v2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextEncoderConfig {
    /// A local Hugging Face directory of a BERT-architecture encoder, relative to
    /// the recipe.
    pub from: String,
    /// Its output width `d_s` (checked against its `config.json`; stated here so
    /// that `vlmkit params` can size the connector without the directory).
    pub hidden_size: usize,
    /// How token states become the sentence vector; by default what the
    /// directory's sentence-transformers files say, else the mean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<Pooling>,
}

/// `[connector]` settings of `kind = "igva"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IgvaConfig {
    pub groups: Groups,
    /// The layer concatenated with the aggregate (HF index, negative from the end).
    pub base_layer: i64,
    /// Blocks of the weight allocator.
    pub depth: usize,
    pub heads: usize,
    /// λ of the entropy bonus `-λ·H(w)`.
    pub entropy_weight: f64,
    pub aggregate: Aggregate,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_encoder: Option<TextEncoderConfig>,
}

impl Default for IgvaConfig {
    fn default() -> Self {
        Self {
            groups: Groups::Equal(4),
            base_layer: -2,
            depth: 4,
            heads: 4,
            entropy_weight: 0.02,
            aggregate: Aggregate::Learned,
            text_encoder: None,
        }
    }
}

/// LayerNorm eps of the allocator (the spec's default).
const NORM_EPS: f64 = 1e-5;

impl IgvaConfig {
    /// The groups as absolute hidden-state indices for an encoder of `vision`'s
    /// depth. Errors name the setting and say what conflicts.
    pub fn resolve_groups(
        &self,
        vision: &VisionInfo,
    ) -> Result<Vec<Vec<usize>>, (&'static str, String)> {
        let depth = vision.depth;
        let groups = match &self.groups {
            Groups::Equal(0) => return Err(("groups", "at least one group".into())),
            Groups::Equal(k) if !depth.is_multiple_of(*k) => {
                return Err((
                    "groups",
                    format!(
                        "the encoder's {depth} blocks do not split into {k} equal groups; list the groups instead, e.g. groups = [[1, 2], [3, 4]]"
                    ),
                ))
            }
            Groups::Equal(k) => {
                let size = depth / k;
                (0..*k)
                    .map(|g| (g * size + 1..=(g + 1) * size).collect())
                    .collect()
            }
            Groups::Listed(listed) => {
                let mut groups = Vec::with_capacity(listed.len());
                for group in listed {
                    if group.is_empty() {
                        return Err(("groups", "a group needs at least one layer".into()));
                    }
                    let mut resolved = Vec::with_capacity(group.len());
                    for &index in group {
                        let abs = vision.resolve(index).map_err(|e| {
                            ("groups", format!("group {group:?}: {e}"))
                        })?;
                        resolved.push(abs);
                    }
                    groups.push(resolved);
                }
                groups
            }
        };
        if groups.len() < 2 {
            return Err((
                "groups",
                "IGVA weighs groups against each other: give at least two".into(),
            ));
        }
        Ok(groups)
    }

    /// Weights that cannot change the output, so their gradient is zero: each
    /// allocator block's key bias adds the same `q·b_k` to every group's score.
    /// Kept: the published module has them.
    pub fn softmax_invariant_params(depth: usize) -> Vec<String> {
        (0..depth)
            .map(|i| format!("blocks.{i}.attn.k.bias"))
            .collect()
    }

    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.heads == 0 {
            return Err(("heads", "at least one head".into()));
        }
        if !(self.entropy_weight.is_finite() && self.entropy_weight >= 0.0) {
            return Err((
                "entropy_weight",
                format!("must be non-negative, found {}", self.entropy_weight),
            ));
        }
        if let Some(enc) = &self.text_encoder {
            if enc.hidden_size == 0 {
                return Err(("text_encoder", "`hidden_size` must be positive".into()));
            }
        }
        Ok(())
    }
}

pub struct IgvaFactory;

impl IgvaFactory {
    /// Every grouped layer must be selected and shaped like the base layer; the
    /// heads must divide its width. Returns the groups and the base layer.
    fn check_layers(
        cfg: &IgvaConfig,
        env: &ConnectorEnv,
    ) -> Result<(Vec<Vec<usize>>, usize), ConfigError> {
        let groups = cfg.resolve_groups(&env.vision)?;
        let base = env.selected("base_layer", cfg.base_layer)?;
        for &layer in groups.iter().flatten() {
            env.check_same_shape(layer, base, "IGVA", "groups")?;
        }
        if !env.width(base).is_multiple_of(cfg.heads) {
            return Err(ConfigError::new(
                "heads",
                format!(
                    "{} heads do not divide the vision width {}",
                    cfg.heads,
                    env.width(base)
                ),
            ));
        }
        Ok((groups, base))
    }
}

impl ConnectorFactory for IgvaFactory {
    type Config = IgvaConfig;

    const KIND: &'static str = "igva";
    const SUMMARY: &'static str =
        "IGVA-like: the instruction weighs groups of vision layers (a small transformer over the groups' class tokens), the weighted patches join hs[-2], then LLaVA's MLP";

    fn needs(&self, cfg: &IgvaConfig, vision: &VisionInfo) -> Result<ConnectorNeeds, ConfigError> {
        cfg.check()?;
        let base = vision.layer("base_layer", cfg.base_layer)?;
        let groups = cfg.resolve_groups(vision)?;
        Ok(ConnectorNeeds {
            reads_text: true,
            // The class token is used when there is one, else the mean patch:
            // `reads_cls` stays false.
            aux_losses: match cfg.aggregate {
                Aggregate::Learned => vec!["entropy".to_string()],
                Aggregate::Mean => Vec::new(),
            },
            weight_dirs: cfg
                .text_encoder
                .iter()
                .map(|enc| ("text_encoder.from".to_string(), enc.from.clone()))
                .collect(),
            ..ConnectorNeeds::prefix(vlmkit_plugin::default_layers(groups.concat(), base))
        })
    }

    fn check(&self, cfg: &IgvaConfig, env: &ConnectorEnv) -> Result<(), ConfigError> {
        Self::check_layers(cfg, env)?;
        Ok(())
    }

    fn build(
        &self,
        cfg: &IgvaConfig,
        env: &ConnectorEnv,
        vb: VarBuilder,
    ) -> Result<Box<dyn Connector>, BuildError> {
        let (groups, base) = Self::check_layers(cfg, env)?;
        let text = match &cfg.text_encoder {
            None => TextSource::QueryEmbeddings,
            // Shapes only (`vlmkit params`): the frozen encoder has no trainable part.
            Some(_) if env.weight_dirs.is_empty() => TextSource::NotLoaded,
            Some(enc) => {
                let dir = env.weight_dirs.get("text_encoder.from").ok_or_else(|| {
                    ConfigError::new(
                        "text_encoder.from",
                        "the host did not resolve this directory",
                    )
                })?;
                let encoder = SentenceEncoder::load_shared(dir, enc.pooling)
                    .map_err(|e| ConfigError::new("text_encoder.from", e.to_string()))?;
                if encoder.hidden_size() != enc.hidden_size {
                    return Err(ConfigError::new(
                        "text_encoder.hidden_size",
                        format!(
                            "is {}, but {} says the encoder's width is {}",
                            enc.hidden_size,
                            dir.join("config.json").display(),
                            encoder.hidden_size()
                        ),
                    )
                    .into());
                }
                TextSource::Encoder(encoder)
            }
        };
        let dims = IgvaDims {
            vision: env.width(base),
            text: cfg
                .text_encoder
                .as_ref()
                .map_or(env.text_hidden, |enc| enc.hidden_size),
            llm: env.llm_hidden,
        };
        Ok(Box::new(IgvaConnector::new(cfg, groups, dims, text, vb)?))
    }

    fn param_groups(&self) -> Vec<ParamGroup> {
        vec![
            ParamGroup {
                name: "aggregator",
                prefixes: vec!["text_proj.", "cls_proj.", "blocks.", "head."],
            },
            ParamGroup {
                name: "projector",
                prefixes: vec!["proj."],
            },
        ]
    }
}

/// Widths the connector is built for.
#[derive(Debug, Clone, Copy)]
pub struct IgvaDims {
    /// `d_v`, the vision width.
    pub vision: usize,
    /// `d_s`, the text vector's width (the LLM width for the mean query embedding).
    pub text: usize,
    /// `d_llm`, the width of the visual tokens.
    pub llm: usize,
}

/// One allocator block: `q = LN(q + MHA(q, C, C)); q = LN(q + FFN(q))`.
struct AllocatorBlock {
    attn: nn::MultiHeadAttention,
    norm1: nn::LayerNorm,
    ffn: nn::FeedForward,
    norm2: nn::LayerNorm,
}

impl AllocatorBlock {
    fn new(width: usize, heads: usize, vb: VarBuilder) -> TensorResult<Self> {
        Ok(Self {
            attn: nn::MultiHeadAttention::new(
                nn::AttentionConfig {
                    q_dim: width,
                    kv_dim: width,
                    out_dim: width,
                    heads,
                    kv_heads: heads,
                    head_dim: width / heads,
                    qkv_bias: true,
                    out_bias: true,
                    names: ["q", "k", "v"],
                    out_name: Some("o"),
                    init: nn::LinearInit::Torch,
                },
                vb.pp("attn"),
            )?,
            norm1: nn::LayerNorm::new(width, NORM_EPS, vb.pp("norm1"))?,
            ffn: nn::FeedForward::new(
                nn::FeedForwardConfig {
                    in_dim: width,
                    hidden_dim: width,
                    out_dim: width,
                    act: ops::Activation::Relu,
                    bias: true,
                    names: ("0", "2"),
                    init: nn::LinearInit::Torch,
                },
                vb.pp("ffn"),
            )?,
            norm2: nn::LayerNorm::new(width, NORM_EPS, vb.pp("norm2"))?,
        })
    }

    fn forward(&self, q: &Tensor, descriptors: &Tensor) -> TensorResult<Tensor> {
        let (k, v) = self.attn.project_kv(descriptors, None)?;
        let att = self.attn.forward_kv(q, &k, &v, None, None)?.output;
        let q = self.norm1.forward(&(q + att)?)?;
        self.norm2.forward(&(&q + self.ffn.forward(&q)?)?)
    }
}

/// Where the text vector `s` comes from.
#[derive(Debug, Clone)]
pub enum TextSource {
    /// The mask-weighted mean of the language model's query embeddings.
    QueryEmbeddings,
    /// A frozen sentence encoder over the query text.
    Encoder(Arc<SentenceEncoder>),
    /// A sentence encoder is configured but was not loaded (a model built to
    /// count its parameters); running it is an error.
    NotLoaded,
}

/// The aggregator and the projector. Weights: `text_proj.*` (d_s→d_v),
/// `cls_proj.*` (d_v→d_v), `blocks.{i}.{attn.{q,k,v,o}, norm1, ffn.{0,2}, norm2}`,
/// `head.*` (d_v→K), `proj.*` (LLaVA's MLP from 2·d_v).
pub struct IgvaConnector {
    groups: Vec<Vec<usize>>,
    base_layer: i64,
    aggregate: Aggregate,
    entropy_weight: f64,
    text: TextSource,
    text_proj: nn::Linear,
    cls_proj: nn::Linear,
    blocks: Vec<AllocatorBlock>,
    head: nn::Linear,
    proj: nn::FeedForward,
}

impl IgvaConnector {
    pub fn new(
        cfg: &IgvaConfig,
        groups: Vec<Vec<usize>>,
        dims: IgvaDims,
        text: TextSource,
        vb: VarBuilder,
    ) -> TensorResult<Self> {
        if let TextSource::Encoder(encoder) = &text {
            if encoder.hidden_size() != dims.text {
                vlmkit_plugin::candle_core::bail!(
                    "igva: the sentence encoder's width is {}, the text projection's input {}",
                    encoder.hidden_size(),
                    dims.text
                );
            }
        }
        let linear =
            |i, o, name: &str| nn::Linear::new(i, o, true, nn::LinearInit::Torch, vb.pp(name));
        let blocks_vb = vb.pp("blocks");
        Ok(Self {
            base_layer: cfg.base_layer,
            aggregate: cfg.aggregate,
            entropy_weight: cfg.entropy_weight,
            text,
            text_proj: linear(dims.text, dims.vision, "text_proj")?,
            cls_proj: linear(dims.vision, dims.vision, "cls_proj")?,
            blocks: (0..cfg.depth)
                .map(|i| AllocatorBlock::new(dims.vision, cfg.heads, blocks_vb.pp(i)))
                .collect::<TensorResult<_>>()?,
            head: linear(dims.vision, groups.len(), "head")?,
            proj: nn::mlp_projector(2 * dims.vision, dims.llm, vb.pp("proj"))?,
            groups,
        })
    }

    /// The text vector `s` (B×d_s): the sentence encoder's vector of the query
    /// text, or the mask-weighted mean of the query embeddings.
    fn text_vector(&self, text: &TextContext) -> TensorResult<Tensor> {
        match &self.text {
            TextSource::QueryEmbeddings => self.mean_query_embedding(text),
            TextSource::Encoder(encoder) => {
                let batch = text.embeds.dim(0)?;
                if text.queries.len() != batch {
                    vlmkit_plugin::candle_core::bail!(
                        "igva: the sentence encoder reads the query text, but the context carries {} texts for {batch} samples (a tensor file holds embeddings only)",
                        text.queries.len()
                    );
                }
                encoder
                    .encode(&text.queries, text.embeds.device(), text.embeds.dtype())
                    .map_err(|e| vlmkit_plugin::candle_core::Error::Msg(e.to_string()))
            }
            TextSource::NotLoaded => vlmkit_plugin::candle_core::bail!(
                "igva: the sentence encoder (`text_encoder`) was not loaded: this model was built to count parameters, not to run"
            ),
        }
    }

    fn mean_query_embedding(&self, text: &TextContext) -> TensorResult<Tensor> {
        let mask = text.mask.to_dtype(text.embeds.dtype())?;
        let summed = text.embeds.broadcast_mul(&mask.unsqueeze(2)?)?.sum(1)?;
        // A sample without query tokens gets a zero vector, not a division by zero.
        let count = mask.sum_keepdim(1)?.clamp(1.0, f64::INFINITY)?;
        summed.broadcast_div(&count)
    }

    /// Per group: the class descriptor `c_k` (B×d) and the patch mean `P_k` (B×N×d).
    fn group_means(&self, vision: &VisualFeatures) -> TensorResult<(Tensor, Tensor)> {
        let mut descriptors = Vec::with_capacity(self.groups.len());
        let mut patches = Vec::with_capacity(self.groups.len());
        for group in &self.groups {
            let positions = group
                .iter()
                .map(|&l| {
                    vision
                        .position(l as i64)
                        .map_err(vlmkit_plugin::candle_core::Error::from)
                })
                .collect::<TensorResult<Vec<_>>>()?;
            let mean = |of: &dyn Fn(usize) -> Tensor| -> TensorResult<Tensor> {
                let members: Vec<Tensor> = positions.iter().map(|&p| of(p)).collect();
                Tensor::stack(&members, 0)?.mean(0)
            };
            let p = mean(&|p| vision.layers[p].clone())?;
            let c = match &vision.cls {
                Some(cls) => mean(&|p| cls[p].clone())?,
                None => p.mean(1)?,
            };
            descriptors.push(c);
            patches.push(p);
        }
        Ok((Tensor::stack(&descriptors, 1)?, Tensor::stack(&patches, 1)?))
    }

    /// The group weights `w` (B×K) from the instruction and the descriptors.
    fn allocate(&self, text: &TextContext, descriptors: &Tensor) -> TensorResult<Tensor> {
        let mut q = self
            .text_proj
            .forward(&self.text_vector(text)?)?
            .unsqueeze(1)?;
        let c = self.cls_proj.forward(descriptors)?;
        for block in &self.blocks {
            q = block.forward(&q, &c)?;
        }
        ops::softmax_last_dim(&self.head.forward(&q)?.squeeze(1)?)
    }
}

impl Connector for IgvaConnector {
    fn forward(
        &self,
        vision: &VisualFeatures,
        text: Option<&TextContext>,
    ) -> TensorResult<ConnectorOutput> {
        let (descriptors, patches) = self.group_means(vision)?;
        let (b, k) = descriptors.dims3().map(|(b, k, _)| (b, k))?;
        let weights = match self.aggregate {
            Aggregate::Mean => {
                Tensor::ones((b, k), descriptors.dtype(), descriptors.device())? / k as f64
            }
            Aggregate::Learned => {
                let text = text.ok_or_else(|| {
                    vlmkit_plugin::candle_core::Error::Msg(
                        "igva: the learned aggregate reads the query text, and none was given"
                            .into(),
                    )
                })?;
                self.allocate(text, &descriptors)
            }
        }?;
        let fused = patches
            .broadcast_mul(&weights.unsqueeze(2)?.unsqueeze(3)?)?
            .sum(1)?;
        let base = vision
            .layer(self.base_layer)
            .map_err(vlmkit_plugin::candle_core::Error::from)?;
        let tokens = self
            .proj
            .forward(&Tensor::cat(&[base, &fused], D::Minus1)?)?;
        let mut aux_losses = BTreeMap::new();
        if self.aggregate == Aggregate::Learned {
            // -λ·H(w), averaged over the batch; a weight of exactly zero adds 0·log 0 = 0.
            let entropy = (weights.clamp(1e-30, 1.0)?.log()? * &weights)?
                .sum(1)?
                .neg()?
                .mean(0)?;
            aux_losses.insert("entropy".to_string(), (entropy * -self.entropy_weight)?);
        }
        Ok(ConnectorOutput {
            tokens: Some(tokens),
            maps: BTreeMap::from([("groups".to_string(), weights)]),
            aux_losses,
            ..Default::default()
        })
    }
}

vlmkit_plugin::export_connector!(IgvaFactory);

#[cfg(test)]
mod tests;
