//! Dense Connector (Yao et al., NeurIPS 2024): parameter-free fusion of several
//! vision layers in front of LLaVA's MLP projector. Three variants:
//!
//! - `dci` (Dense Channel Integration, the default): `X = concat_ch[V0, G1, G2]`
//!   with `G1 = mean(hs[0 .. L/2-1])`, `G2 = mean(hs[L/2 .. L-1])`;
//! - `sci` (Sparse Channel Integration): `X = concat_ch[V0, hs[L/3-1], hs[2L/3-1]]`;
//! - `sti` (Sparse Token Integration): `X = concat_seq[V0, A1, A2]`, `A_i` the
//!   SCI layers average-pooled over the token sequence (window and stride 8).
//!
//! `V0 = hs[-2]`; `Y = proj(X)`. The math and weight names (`proj.*`) follow
//! `shared/spec/connectors.md` § dense.

use serde::{Deserialize, Serialize};
use vlmkit_plugin::candle_core::Result as TensorResult;
use vlmkit_plugin::prelude::*;
use vlmkit_plugin::BuildError;

/// Which of the paper's three integrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    Dci,
    Sci,
    Sti,
}

/// `[connector]` settings of `kind = "dense"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DenseConfig {
    pub variant: Variant,
    /// `V0`, the layer every variant keeps whole (HF index, negative from the end).
    pub base_layer: i64,
    /// STI's average-pooling window and stride, in tokens.
    pub pool: usize,
}

impl Default for DenseConfig {
    fn default() -> Self {
        Self {
            variant: Variant::Dci,
            base_layer: -2,
            pool: 8,
        }
    }
}

/// The hidden states a variant fuses with `V0`, resolved against the encoder's
/// depth `L` (absolute indices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Integration {
    /// Two groups whose means are concatenated along channels.
    Channels { groups: [Vec<usize>; 2] },
    /// Two layers concatenated along channels (SCI) or, pooled, along the token
    /// sequence (STI).
    Sparse {
        layers: [usize; 2],
        pool: Option<usize>,
    },
}

impl DenseConfig {
    /// The layers each variant reads besides `V0`, for an encoder of `depth` blocks.
    pub fn integration(&self, depth: usize) -> Result<Integration, (&'static str, String)> {
        match self.variant {
            Variant::Dci => {
                if depth < 2 {
                    return Err((
                        "variant",
                        format!("DCI splits the blocks into two groups; the encoder has {depth}"),
                    ));
                }
                // The official groups: they include hs[0] and never use the last block.
                let half = depth / 2;
                Ok(Integration::Channels {
                    groups: [(0..half).collect(), (half..depth).collect()],
                })
            }
            Variant::Sci | Variant::Sti => {
                if depth < 3 {
                    return Err((
                        "variant",
                        format!(
                            "SCI and STI read hs[L/3 - 1] and hs[2L/3 - 1], which needs at least 3 blocks; the encoder has {depth}"
                        ),
                    ));
                }
                let pool = (self.variant == Variant::Sti).then_some(self.pool);
                if pool == Some(0) {
                    return Err(("pool", "the pooling window must be at least 1".into()));
                }
                Ok(Integration::Sparse {
                    layers: [depth / 3 - 1, 2 * depth / 3 - 1],
                    pool,
                })
            }
        }
    }
}

impl Integration {
    /// Every layer it reads besides `V0`.
    fn layers(&self) -> Vec<usize> {
        match self {
            Integration::Channels { groups } => groups.concat(),
            Integration::Sparse { layers, .. } => layers.to_vec(),
        }
    }

    /// Width of the projector's input, for layers of width `d`.
    fn input_width(&self, d: usize) -> usize {
        match self {
            Integration::Channels { .. } | Integration::Sparse { pool: None, .. } => 3 * d,
            Integration::Sparse { pool: Some(_), .. } => d,
        }
    }

    /// Visual tokens for `n` patches.
    fn tokens(&self, n: usize) -> usize {
        match self {
            Integration::Sparse {
                pool: Some(pool), ..
            } => n + 2 * (n / pool),
            _ => n,
        }
    }
}

pub struct DenseFactory;

/// The settings resolved against the encoder: what the variant reads, and the
/// base layer as an absolute index.
struct Resolved {
    integration: Integration,
    base: usize,
}

impl Resolved {
    fn new(cfg: &DenseConfig, vision: &VisionInfo) -> Result<Self, ConfigError> {
        Ok(Self {
            base: vision.layer("base_layer", cfg.base_layer)?,
            integration: cfg.integration(vision.depth)?,
        })
    }

    /// The base layer's patch count, after checking every layer the variant
    /// reads is selected and shaped like the base layer.
    fn checked_patches(&self, cfg: &DenseConfig, env: &ConnectorEnv) -> Result<usize, ConfigError> {
        env.selected("base_layer", cfg.base_layer)?;
        for layer in self.integration.layers() {
            env.check_same_shape(layer, self.base, "the Dense Connector", "variant")?;
        }
        let (rows, cols) = env.vision.grids[self.base];
        if let Integration::Sparse {
            pool: Some(pool), ..
        } = self.integration
        {
            if pool > rows * cols {
                return Err(ConfigError::new(
                    "pool",
                    format!(
                        "a window of {pool} tokens is longer than the {} patches",
                        rows * cols
                    ),
                ));
            }
        }
        Ok(rows * cols)
    }
}

impl ConnectorFactory for DenseFactory {
    type Config = DenseConfig;

    const KIND: &'static str = "dense";
    const SUMMARY: &'static str =
        "Dense Connector: several vision layers fused without parameters (channel means, sparse channels or pooled tokens), then LLaVA's MLP";

    fn needs(&self, cfg: &DenseConfig, vision: &VisionInfo) -> Result<ConnectorNeeds, ConfigError> {
        let r = Resolved::new(cfg, vision)?;
        Ok(ConnectorNeeds::prefix(vlmkit_plugin::default_layers(
            r.integration.layers(),
            r.base,
        )))
    }

    fn check(&self, cfg: &DenseConfig, env: &ConnectorEnv) -> Result<(), ConfigError> {
        Resolved::new(cfg, &env.vision)?.checked_patches(cfg, env)?;
        Ok(())
    }

    fn visual_tokens(&self, cfg: &DenseConfig, env: &ConnectorEnv) -> Result<usize, ConfigError> {
        let r = Resolved::new(cfg, &env.vision)?;
        Ok(r.integration.tokens(r.checked_patches(cfg, env)?))
    }

    fn build(
        &self,
        cfg: &DenseConfig,
        env: &ConnectorEnv,
        vb: VarBuilder,
    ) -> Result<Box<dyn Connector>, BuildError> {
        let r = Resolved::new(cfg, &env.vision)?;
        r.checked_patches(cfg, env)?;
        Ok(Box::new(DenseConnector::new(
            cfg.base_layer,
            r.integration,
            env.width(r.base),
            env.llm_hidden,
            vb,
        )?))
    }
}

/// The fusion and the projector.
pub struct DenseConnector {
    base_layer: i64,
    integration: Integration,
    proj: nn::FeedForward,
}

impl DenseConnector {
    pub fn new(
        base_layer: i64,
        integration: Integration,
        vision_width: usize,
        llm_width: usize,
        vb: VarBuilder,
    ) -> TensorResult<Self> {
        let proj = nn::mlp_projector(
            integration.input_width(vision_width),
            llm_width,
            vb.pp("proj"),
        )?;
        Ok(Self {
            base_layer,
            integration,
            proj,
        })
    }

    /// The projector's input `X`.
    pub fn fuse(&self, vision: &VisualFeatures) -> TensorResult<Tensor> {
        let layer = |abs: usize| {
            vision
                .layer(abs as i64)
                .map_err(vlmkit_plugin::candle_core::Error::from)
        };
        let v0 = vision
            .layer(self.base_layer)
            .map_err(vlmkit_plugin::candle_core::Error::from)?;
        match &self.integration {
            Integration::Channels { groups } => {
                let mut parts = vec![v0.clone()];
                for group in groups {
                    let members = group
                        .iter()
                        .map(|&l| layer(l))
                        .collect::<TensorResult<Vec<_>>>()?;
                    parts.push(Tensor::stack(&members, 0)?.mean(0)?);
                }
                Tensor::cat(&parts, D::Minus1)
            }
            Integration::Sparse { layers, pool: None } => {
                Tensor::cat(&[v0, layer(layers[0])?, layer(layers[1])?], D::Minus1)
            }
            Integration::Sparse {
                layers,
                pool: Some(pool),
            } => Tensor::cat(
                &[
                    v0.clone(),
                    avg_pool_tokens(layer(layers[0])?, *pool)?,
                    avg_pool_tokens(layer(layers[1])?, *pool)?,
                ],
                1,
            ),
        }
    }
}

/// `AvgPool1d(kernel = stride = window)` over the token axis of `B×N×d`: the
/// means of consecutive windows in raster order, a trailing partial window
/// dropped (as PyTorch does).
pub fn avg_pool_tokens(x: &Tensor, window: usize) -> TensorResult<Tensor> {
    let (b, n, d) = x.dims3()?;
    let windows = n / window;
    x.narrow(1, 0, windows * window)?
        .reshape((b, windows, window, d))?
        .mean(2)
}

impl Connector for DenseConnector {
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

vlmkit_plugin::export_connector!(DenseFactory);

#[cfg(test)]
mod tests;
