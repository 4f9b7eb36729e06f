//! AGE-style interleaved connector: gated cross-attention blocks inside the
//! language model, after AGE-VLM (arXiv 2511.17793) and Flamingo.
//!
//! No visual tokens enter the sequence. `Z = adapter(V_sel)` (Linear d_v→d_llm)
//! is the memory; before each decoder layer a recipe lists, a block runs
//! `x ← x + tanh(a_attn) · XAttn(LN(x), Z)`, `x ← x + tanh(a_ff) · FFN(LN(x))`
//! with both gates at zero at initialisation, so the language model's output is
//! unchanged at step 0. Each block's attention, averaged over heads, is exposed
//! as the map `xattn` (`B×K×T×N`) for the mask-guided Dice loss. The math and
//! weight names follow `shared/spec/connectors.md` § age.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vlmkit_plugin::candle_core::Result as TensorResult;
use vlmkit_plugin::candle_nn::Init;
use vlmkit_plugin::prelude::*;
use vlmkit_plugin::vlmkit_core::DecoderHooks;
use vlmkit_plugin::BuildError;

/// `[connector]` settings of `kind = "age"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgeConfig {
    /// The vision hidden state the adapter reads (HF index, negative from the end).
    pub layer: i64,
    /// Decoder layers (0-based) that get a gated block in front of them; by
    /// default every fourth from the third: `[2, 6, 10, 14]` for 16 layers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<usize>>,
    /// Cross-attention heads.
    pub heads: usize,
}

impl Default for AgeConfig {
    fn default() -> Self {
        Self {
            layer: -1,
            layers: None,
            heads: 8,
        }
    }
}

impl AgeConfig {
    /// The decoder layers that get a block, for a language model of `depth` layers.
    pub fn block_positions(&self, depth: usize) -> Vec<usize> {
        match &self.layers {
            Some(listed) => listed.clone(),
            None => (2..depth).step_by(4).collect(),
        }
    }
}

/// The name of the map the grounding loss reads.
pub const GROUNDING_MAP: &str = "xattn";

/// LayerNorm eps of the blocks' norms.
const NORM_EPS: f64 = 1e-5;

pub struct AgeFactory;

impl AgeFactory {
    /// Checks the block positions against the language model and the heads
    /// against its width; returns the positions.
    fn check_llm(cfg: &AgeConfig, env: &ConnectorEnv) -> Result<Vec<usize>, ConfigError> {
        let positions = cfg.block_positions(env.llm_layers);
        if positions.is_empty() {
            return Err(ConfigError::new(
                "layers",
                format!(
                    "no decoder layer gets a cross-attention block (the language model has {} layers); list some, e.g. layers = [0]",
                    env.llm_layers
                ),
            ));
        }
        if let Some(&deep) = positions.iter().find(|&&p| p >= env.llm_layers) {
            return Err(ConfigError::new(
                "layers",
                format!(
                    "decoder layer {deep} does not exist: the language model has {} layers (0-based positions 0..{})",
                    env.llm_layers,
                    env.llm_layers - 1
                ),
            ));
        }
        if positions.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ConfigError::new(
                "layers",
                format!("positions must increase, each once: {positions:?}"),
            ));
        }
        if !env.llm_hidden.is_multiple_of(cfg.heads) {
            return Err(ConfigError::new(
                "heads",
                format!(
                    "{} heads do not divide the language model's width {}",
                    cfg.heads, env.llm_hidden
                ),
            ));
        }
        Ok(positions)
    }
}

impl ConnectorFactory for AgeFactory {
    type Config = AgeConfig;

    const KIND: &'static str = "age";
    const SUMMARY: &'static str =
        "AGE-style: tanh-gated cross-attention blocks inside the language model read the adapted vision layer (no visual tokens in the sequence); exposes its attention for the Dice loss";

    fn needs(&self, cfg: &AgeConfig, vision: &VisionInfo) -> Result<ConnectorNeeds, ConfigError> {
        vision.layer("layer", cfg.layer)?;
        if cfg.heads == 0 {
            return Err(ConfigError::new("heads", "at least one head"));
        }
        Ok(ConnectorNeeds {
            placement: Placement::Interleaved,
            grounding_map: Some(GROUNDING_MAP.to_string()),
            ..ConnectorNeeds::prefix(vec![cfg.layer])
        })
    }

    fn check(&self, cfg: &AgeConfig, env: &ConnectorEnv) -> Result<(), ConfigError> {
        env.selected("layer", cfg.layer)?;
        Self::check_llm(cfg, env)?;
        Ok(())
    }

    fn build(
        &self,
        cfg: &AgeConfig,
        env: &ConnectorEnv,
        vb: VarBuilder,
    ) -> Result<Box<dyn Connector>, BuildError> {
        let layer = env.selected("layer", cfg.layer)?;
        let positions = Self::check_llm(cfg, env)?;
        let dims = AgeDims {
            vision: env.width(layer),
            llm: env.llm_hidden,
        };
        Ok(Box::new(AgeConnector::new(cfg, positions, dims, vb)?))
    }

    /// No tokens enter the sequence.
    fn visual_tokens(&self, _: &AgeConfig, _: &ConnectorEnv) -> Result<usize, ConfigError> {
        Ok(0)
    }

    fn param_groups(&self) -> Vec<ParamGroup> {
        vec![
            ParamGroup {
                name: "adapter",
                prefixes: vec!["adapter."],
            },
            ParamGroup {
                name: "cross-attention blocks",
                prefixes: vec!["blocks."],
            },
        ]
    }
}

/// Widths the connector is built for.
#[derive(Debug, Clone, Copy)]
pub struct AgeDims {
    /// `d_v`, the selected vision layer's width.
    pub vision: usize,
    /// `d_llm`, the language model's width.
    pub llm: usize,
}

/// One gated block. Weights `norm_attn`, `q`, `k`, `v`, `o` (no biases),
/// `gate_attn`, `norm_ff`, `ff.0`, `ff.2` (no biases), `gate_ff`.
#[derive(Clone)]
struct GatedBlock {
    norm_attn: nn::LayerNorm,
    attn: nn::MultiHeadAttention,
    gate_attn: Tensor,
    norm_ff: nn::LayerNorm,
    ff: nn::FeedForward,
    gate_ff: Tensor,
}

impl GatedBlock {
    fn new(width: usize, heads: usize, vb: VarBuilder) -> TensorResult<Self> {
        Ok(Self {
            norm_attn: nn::LayerNorm::new(width, NORM_EPS, vb.pp("norm_attn"))?,
            attn: nn::MultiHeadAttention::new(
                nn::AttentionConfig {
                    q_dim: width,
                    kv_dim: width,
                    out_dim: width,
                    heads,
                    kv_heads: heads,
                    head_dim: width / heads,
                    qkv_bias: false,
                    out_bias: false,
                    names: ["q", "k", "v"],
                    out_name: Some("o"),
                    init: nn::LinearInit::Torch,
                },
                vb.clone(),
            )?,
            gate_attn: vb.get_with_hints(1, "gate_attn", Init::Const(0.0))?,
            norm_ff: nn::LayerNorm::new(width, NORM_EPS, vb.pp("norm_ff"))?,
            ff: nn::FeedForward::new(
                nn::FeedForwardConfig {
                    in_dim: width,
                    hidden_dim: 4 * width,
                    out_dim: width,
                    act: ops::Activation::Gelu,
                    bias: false,
                    names: ("0", "2"),
                    init: nn::LinearInit::Torch,
                },
                vb.pp("ff"),
            )?,
            gate_ff: vb.get_with_hints(1, "gate_ff", Init::Const(0.0))?,
        })
    }

    /// The block on hidden states `x` (`B×T×d`) over precomputed keys and values
    /// of `Z`; returns the new states and the head-averaged attention (`B×T×N`).
    fn forward(&self, x: &Tensor, k: &Tensor, v: &Tensor) -> TensorResult<(Tensor, Tensor)> {
        // The probabilities stay in the graph: the Dice loss trains through them.
        let attended =
            self.attn
                .forward_kv_tracked(&self.norm_attn.forward(x)?, k, v, None, None)?;
        let x = (x + attended
            .output
            .broadcast_mul(&ops::cast_like(&self.gate_attn, x)?.tanh()?)?)?;
        let ff = self.ff.forward(&self.norm_ff.forward(&x)?)?;
        let x = (&x + ff.broadcast_mul(&ops::cast_like(&self.gate_ff, &x)?.tanh()?)?)?;
        Ok((x, attended.probs.mean(1)?))
    }
}

/// The adapter and the gated blocks. Weights: `adapter.*`, `blocks.{j}.*`.
pub struct AgeConnector {
    layer: i64,
    adapter: nn::Linear,
    blocks: Arc<Vec<GatedBlock>>,
    /// Decoder layer in front of which block `j` runs.
    positions: Vec<usize>,
}

impl AgeConnector {
    pub fn new(
        cfg: &AgeConfig,
        positions: Vec<usize>,
        dims: AgeDims,
        vb: VarBuilder,
    ) -> TensorResult<Self> {
        let blocks_vb = vb.pp("blocks");
        Ok(Self {
            layer: cfg.layer,
            adapter: nn::Linear::new(
                dims.vision,
                dims.llm,
                true,
                nn::LinearInit::Torch,
                vb.pp("adapter"),
            )?,
            blocks: Arc::new(
                (0..positions.len())
                    .map(|j| GatedBlock::new(dims.llm, cfg.heads, blocks_vb.pp(j)))
                    .collect::<TensorResult<_>>()?,
            ),
            positions,
        })
    }
}

impl Connector for AgeConnector {
    fn forward(
        &self,
        vision: &VisualFeatures,
        _text: Option<&TextContext>,
    ) -> TensorResult<ConnectorOutput> {
        let selected = vision
            .layer(self.layer)
            .map_err(vlmkit_plugin::candle_core::Error::from)?;
        let memory = self.adapter.forward(selected)?;
        // Keys and values of the image, once per image: generation reuses them for
        // every new token.
        let kv = self
            .blocks
            .iter()
            .map(|b| b.attn.project_kv(&memory, None))
            .collect::<TensorResult<Vec<_>>>()?;
        let hooks = AgeHooks {
            blocks: self.blocks.clone(),
            positions: self.positions.clone(),
            kv,
            attention: Mutex::new(BTreeMap::new()),
        };
        Ok(ConnectorOutput {
            hooks: Some(Arc::new(hooks)),
            ..Default::default()
        })
    }
}

/// The blocks bound to one batch of images.
struct AgeHooks {
    blocks: Arc<Vec<GatedBlock>>,
    positions: Vec<usize>,
    kv: Vec<(Tensor, Tensor)>,
    /// The last attention of each block (by block index), for `maps`.
    attention: Mutex<BTreeMap<usize, Tensor>>,
}

impl DecoderHooks for AgeHooks {
    fn before_layer(&self, layer: usize, hidden: &Tensor) -> TensorResult<Tensor> {
        let Some(j) = self.positions.iter().position(|&p| p == layer) else {
            return Ok(hidden.clone());
        };
        let (k, v) = &self.kv[j];
        let (out, attention) = self.blocks[j].forward(hidden, k, v)?;
        self.attention
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(j, attention);
        Ok(out)
    }

    /// `xattn`: every block's head-averaged attention of the last call,
    /// `B×K×T×N` in block order.
    fn maps(&self) -> BTreeMap<String, Tensor> {
        let attention = self.attention.lock().unwrap_or_else(|p| p.into_inner());
        if attention.len() != self.blocks.len() {
            return BTreeMap::new();
        }
        let per_block: Vec<&Tensor> = attention.values().collect();
        // Every block of one pass attended from the same positions to the same memory.
        let stacked = Tensor::stack(&per_block, 1).expect("blocks of one pass share a shape");
        BTreeMap::from([(GROUNDING_MAP.to_string(), stacked)])
    }
}

vlmkit_plugin::export_connector!(AgeFactory);

#[cfg(test)]
mod tests;
