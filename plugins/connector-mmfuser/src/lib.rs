//! MMFuser-like connector: the deep layer queries shallow multi-level features.
//!
//! `Q = hs[-2]` patches; `S` = the level layers concatenated along tokens.
//! `A = MHA(LN_q(Q), LN_f(S))` (dense cross-attention), `A2 = MHA(LN_1(A))`
//! (self-attention over the patches), `A ← A + γ2 ⊙ A2`, `Z = Q + γ1 ⊙ A`,
//! `Y = proj(Z)`. γ1, γ2 start at zero: at initialisation the block is the
//! identity and the connector is LLaVA's MLP on `hs[-2]`. The math and weight
//! names follow `shared/spec/connectors.md` § mmfuser.

use serde::{Deserialize, Serialize};
use vlmkit_plugin::candle_core::Result as TensorResult;
use vlmkit_plugin::candle_nn::Init;
use vlmkit_plugin::prelude::*;
use vlmkit_plugin::BuildError;

/// How the queries read the multi-level features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKind {
    /// Every query attends to every level token (the published module samples a
    /// few points with deformable attention instead; not implemented here).
    Dense,
}

/// `[connector]` settings of `kind = "mmfuser"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MmfuserConfig {
    /// The query layer (HF index, negative from the end).
    pub base_layer: i64,
    /// The shallow levels whose tokens are the keys and values.
    pub levels: Vec<i64>,
    pub heads: usize,
    pub attention: AttentionKind,
}

impl Default for MmfuserConfig {
    fn default() -> Self {
        Self {
            base_layer: -2,
            levels: vec![-22, -17, -12, -7],
            heads: 16,
            attention: AttentionKind::Dense,
        }
    }
}

impl MmfuserConfig {
    /// Weights that cannot change the output, so their gradient is zero: a key
    /// bias adds `q·b_k` to every score of a query alike, which the softmax
    /// removes. Kept because the spec's weights include them.
    pub fn softmax_invariant_params() -> Vec<&'static str> {
        vec!["cross.k.bias", "self_attn.k.bias"]
    }
}

/// LayerNorm eps of every norm in the block.
const NORM_EPS: f64 = 1e-6;

pub struct MmfuserFactory;

impl MmfuserFactory {
    /// Positions resolved and checked against the selected layers: the query layer
    /// and the levels, all of one width that the heads divide.
    fn resolve(
        cfg: &MmfuserConfig,
        env: &ConnectorEnv,
    ) -> Result<(usize, Vec<usize>), ConfigError> {
        let base = env.selected("base_layer", cfg.base_layer)?;
        let width = env.width(base);
        let mut levels = Vec::with_capacity(cfg.levels.len());
        for &level in &cfg.levels {
            let abs = env.selected("levels", level)?;
            if env.width(abs) != width {
                return Err(ConfigError::new(
                    "levels",
                    format!(
                        "level hs[{level}] is {} channels wide but the query layer hs[{}] is {width}; MMFuser attends across levels of one width",
                        env.width(abs),
                        cfg.base_layer
                    ),
                ));
            }
            levels.push(abs);
        }
        if !width.is_multiple_of(cfg.heads) {
            return Err(ConfigError::new(
                "heads",
                format!("{} heads do not divide the vision width {width}", cfg.heads),
            ));
        }
        Ok((base, levels))
    }
}

impl ConnectorFactory for MmfuserFactory {
    type Config = MmfuserConfig;

    const KIND: &'static str = "mmfuser";
    const SUMMARY: &'static str =
        "MMFuser-like: the deep layer cross-attends to shallow levels, then self-attends, through zero-initialised gates; then LLaVA's MLP";

    fn needs(
        &self,
        cfg: &MmfuserConfig,
        vision: &VisionInfo,
    ) -> Result<ConnectorNeeds, ConfigError> {
        vision.layer("base_layer", cfg.base_layer)?;
        if cfg.levels.is_empty() {
            return Err(ConfigError::new("levels", "name at least one level layer"));
        }
        for &level in &cfg.levels {
            vision.layer("levels", level).map_err(|e| {
                ConfigError::new(
                    "levels",
                    format!(
                        "{}; the default levels [-22, -17, -12, -7] assume a 24-block encoder",
                        e.message
                    ),
                )
            })?;
        }
        if cfg.heads == 0 {
            return Err(ConfigError::new("heads", "at least one head"));
        }
        let mut layers = cfg.levels.clone();
        layers.push(cfg.base_layer);
        // Levels may differ in grid (they are concatenated along tokens), not in
        // width: `check` says which.
        Ok(ConnectorNeeds::prefix(layers))
    }

    fn check(&self, cfg: &MmfuserConfig, env: &ConnectorEnv) -> Result<(), ConfigError> {
        Self::resolve(cfg, env)?;
        Ok(())
    }

    fn build(
        &self,
        cfg: &MmfuserConfig,
        env: &ConnectorEnv,
        vb: VarBuilder,
    ) -> Result<Box<dyn Connector>, BuildError> {
        let (base, _) = Self::resolve(cfg, env)?;
        Ok(Box::new(MmfuserConnector::new(
            cfg,
            env.width(base),
            env.llm_hidden,
            vb,
        )?))
    }

    fn param_groups(&self) -> Vec<ParamGroup> {
        vec![
            ParamGroup {
                name: "fusion",
                prefixes: vec![
                    "cross.",
                    "self_attn.",
                    "norm_q.",
                    "norm_f.",
                    "norm_1.",
                    "gamma1",
                    "gamma2",
                ],
            },
            ParamGroup {
                name: "projector",
                prefixes: vec!["proj."],
            },
        ]
    }
}

/// The fusion block and the projector.
pub struct MmfuserConnector {
    base_layer: i64,
    levels: Vec<i64>,
    norm_q: nn::LayerNorm,
    norm_f: nn::LayerNorm,
    norm_1: nn::LayerNorm,
    cross: nn::MultiHeadAttention,
    self_attn: nn::MultiHeadAttention,
    gamma1: Tensor,
    gamma2: Tensor,
    proj: nn::FeedForward,
}

impl MmfuserConnector {
    pub fn new(
        cfg: &MmfuserConfig,
        width: usize,
        llm_width: usize,
        vb: VarBuilder,
    ) -> TensorResult<Self> {
        let attention = |name: &str| {
            nn::MultiHeadAttention::new(
                nn::AttentionConfig {
                    q_dim: width,
                    kv_dim: width,
                    out_dim: width,
                    heads: cfg.heads,
                    kv_heads: cfg.heads,
                    head_dim: width / cfg.heads,
                    qkv_bias: true,
                    out_bias: true,
                    names: ["q", "k", "v"],
                    out_name: Some("o"),
                    init: nn::LinearInit::Torch,
                },
                vb.pp(name),
            )
        };
        Ok(Self {
            base_layer: cfg.base_layer,
            levels: cfg.levels.clone(),
            norm_q: nn::LayerNorm::new(width, NORM_EPS, vb.pp("norm_q"))?,
            norm_f: nn::LayerNorm::new(width, NORM_EPS, vb.pp("norm_f"))?,
            norm_1: nn::LayerNorm::new(width, NORM_EPS, vb.pp("norm_1"))?,
            cross: attention("cross")?,
            self_attn: attention("self_attn")?,
            gamma1: vb.get_with_hints(width, "gamma1", Init::Const(0.0))?,
            gamma2: vb.get_with_hints(width, "gamma2", Init::Const(0.0))?,
            proj: nn::mlp_projector(width, llm_width, vb.pp("proj"))?,
        })
    }

    /// `Z`, the fused patch tokens before the projector.
    pub fn fuse(&self, vision: &VisualFeatures) -> TensorResult<Tensor> {
        let layer = |index: i64| {
            vision
                .layer(index)
                .map_err(vlmkit_plugin::candle_core::Error::from)
        };
        let q = layer(self.base_layer)?;
        let levels = self
            .levels
            .iter()
            .map(|&l| layer(l))
            .collect::<TensorResult<Vec<_>>>()?;
        let s = Tensor::cat(&levels, 1)?;
        let (k, v) = self.cross.project_kv(&self.norm_f.forward(&s)?, None)?;
        let a = self
            .cross
            .forward_kv(&self.norm_q.forward(q)?, &k, &v, None, None)?
            .output;
        let a2 = self
            .self_attn
            .forward_self(&self.norm_1.forward(&a)?, None, None, None)?
            .output;
        let a = (&a + a2.broadcast_mul(&ops::cast_like(&self.gamma2, &a)?)?)?;
        q + a.broadcast_mul(&ops::cast_like(&self.gamma1, &a)?)?
    }
}

impl Connector for MmfuserConnector {
    fn forward(
        &self,
        vision: &VisualFeatures,
        _text: Option<&TextContext>,
    ) -> TensorResult<ConnectorOutput> {
        Ok(ConnectorOutput {
            tokens: Some(self.proj.forward(&self.fuse(vision)?)?),
            ..Default::default()
        })
    }
}

vlmkit_plugin::export_connector!(MmfuserFactory);

#[cfg(test)]
mod tests;
