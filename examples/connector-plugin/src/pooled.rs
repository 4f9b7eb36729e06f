//! Average-pools the patch grid of one vision hidden state in `pool × pool`
//! windows, then projects with LLaVA's two-layer GELU MLP: `pool²` times fewer
//! visual tokens (the token-reduction idea of LLaVA-style "avgpool" projectors).
//! Weights: `proj.0.*`, `proj.2.*`.
//!
//! The pooling matrix is made once, by the plugin's own code, and
//! `probe = true` creates a `Var` inside `forward`: tensors born in the plugin,
//! which the soundness test trains through (with a second copy of candle their
//! ids would collide with the host's and backprop would mix gradients).

use vlmkit_api::candle_core::{Result as TensorResult, Var};
use vlmkit_api::prelude::*;
use vlmkit_api::serde::{Deserialize, Serialize};
use vlmkit_api::BuildError;

/// `[connector]` settings of `kind = "pooled-mlp"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(crate = "vlmkit_api::serde", deny_unknown_fields, default)]
pub struct PooledMlpConfig {
    /// The hidden state pooled and projected (HF index, negative from the end).
    pub base_layer: i64,
    /// Window and stride over the patch grid; must divide both grid sides.
    pub pool: usize,
    /// Multiply the pooled tokens by a unit `Var` created inside `forward` (a
    /// soundness probe: it changes no value).
    pub probe: bool,
}

impl Default for PooledMlpConfig {
    fn default() -> Self {
        Self {
            base_layer: -2,
            pool: 2,
            probe: false,
        }
    }
}

pub struct PooledMlpFactory;

impl PooledMlpFactory {
    /// The pooled layer and its patch grid, which `pool` must divide.
    fn grid(
        cfg: &PooledMlpConfig,
        env: &ConnectorEnv,
    ) -> Result<(usize, (usize, usize)), ConfigError> {
        let base = env.selected("base_layer", cfg.base_layer)?;
        let (rows, cols) = env.vision.grids[base];
        if cfg.pool == 0 || rows % cfg.pool != 0 || cols % cfg.pool != 0 {
            return Err(ConfigError::new(
                "pool",
                format!(
                    "pool = {} must divide the {rows}×{cols} patch grid of hs[{base}]",
                    cfg.pool
                ),
            ));
        }
        Ok((base, (rows, cols)))
    }
}

impl ConnectorFactory for PooledMlpFactory {
    type Config = PooledMlpConfig;

    const KIND: &'static str = "pooled-mlp";
    const SUMMARY: &'static str =
        "average-pools one vision layer's patch grid (pool × pool), then LLaVA's MLP (example plugin)";

    fn needs(
        &self,
        cfg: &PooledMlpConfig,
        vision: &VisionInfo,
    ) -> Result<ConnectorNeeds, ConfigError> {
        vision.layer("base_layer", cfg.base_layer)?;
        Ok(ConnectorNeeds::prefix(vec![cfg.base_layer]))
    }

    fn check(&self, cfg: &PooledMlpConfig, env: &ConnectorEnv) -> Result<(), ConfigError> {
        Self::grid(cfg, env).map(|_| ())
    }

    fn visual_tokens(
        &self,
        cfg: &PooledMlpConfig,
        env: &ConnectorEnv,
    ) -> Result<usize, ConfigError> {
        let (_, (rows, cols)) = Self::grid(cfg, env)?;
        Ok((rows / cfg.pool) * (cols / cfg.pool))
    }

    fn build(
        &self,
        cfg: &PooledMlpConfig,
        env: &ConnectorEnv,
        vb: VarBuilder,
    ) -> Result<Box<dyn Connector>, BuildError> {
        let (base, grid) = Self::grid(cfg, env)?;
        Ok(Box::new(PooledMlp::new(
            cfg,
            grid,
            env.width(base),
            env.llm_hidden,
            vb,
        )?))
    }
}

/// The connector itself.
pub struct PooledMlp {
    cfg: PooledMlpConfig,
    /// `P` (windows × patches, f32) with `P[o, i] = 1/pool²` when raster patch
    /// `i` lies in window `o`; a constant, so built once.
    pool: Tensor,
    proj: nn::FeedForward,
}

impl PooledMlp {
    pub fn new(
        cfg: &PooledMlpConfig,
        grid: (usize, usize),
        vision_width: usize,
        llm_width: usize,
        vb: VarBuilder,
    ) -> TensorResult<Self> {
        Ok(Self {
            cfg: cfg.clone(),
            pool: pooling_matrix(grid, cfg.pool, vb.device())?,
            proj: nn::mlp_projector(vision_width, llm_width, vb.pp("proj"))?,
        })
    }
}

/// The averaging matrix of `pool × pool` windows over a `grid` of patches.
fn pooling_matrix(grid: (usize, usize), pool: usize, device: &Device) -> TensorResult<Tensor> {
    let (rows, cols) = grid;
    let (out_rows, out_cols) = (rows / pool, cols / pool);
    let mut weights = vec![0f32; out_rows * out_cols * rows * cols];
    let share = 1.0 / (pool * pool) as f32;
    for r in 0..rows {
        for c in 0..cols {
            let window = (r / pool) * out_cols + c / pool;
            weights[window * rows * cols + r * cols + c] = share;
        }
    }
    Tensor::from_vec(weights, (out_rows * out_cols, rows * cols), device)
}

impl Connector for PooledMlp {
    fn forward(
        &self,
        vision: &VisualFeatures,
        _text: Option<&TextContext>,
    ) -> TensorResult<ConnectorOutput> {
        let x = vision
            .layer(self.cfg.base_layer)
            .map_err(vlmkit_api::candle_core::Error::from)?;
        let mut pooled = ops::cast_like(&self.pool, x)?.broadcast_matmul(x)?;
        if self.cfg.probe {
            let unit = Var::ones(pooled.dim(D::Minus1)?, x.dtype(), x.device())?;
            pooled = pooled.broadcast_mul(unit.as_tensor())?;
        }
        Ok(ConnectorOutput {
            tokens: Some(self.proj.forward(&pooled)?),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vlmkit_api::vlmkit_core::gradcheck::{check_store_gradients, random_projection, GradCheck};
    use vlmkit_api::vlmkit_core::params::ParamStore;

    fn features(x: Tensor) -> VisualFeatures {
        VisualFeatures {
            layers: vec![x],
            layer_ids: vec![1],
            cls: None,
            depth: 1,
            grid: (2, 4),
        }
    }

    #[test]
    fn pooling_averages_each_window() {
        let store = ParamStore::new(Device::Cpu, DType::F64);
        let cfg = PooledMlpConfig {
            base_layer: -1,
            ..Default::default()
        };
        let connector = PooledMlp::new(&cfg, (2, 4), 1, 3, store.init_builder(0)).unwrap();
        let pool = connector.pool.to_dtype(DType::F64).unwrap();
        let x = Tensor::arange(0f64, 8.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 8, 1))
            .unwrap();
        let pooled: Vec<f64> = pool
            .broadcast_matmul(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // Windows {0,1,4,5} and {2,3,6,7} of the 2×4 grid.
        assert_eq!(pooled, [2.5, 4.5]);
    }

    #[test]
    fn gradients_match_finite_differences() {
        for probe in [false, true] {
            let store = ParamStore::new(Device::Cpu, DType::F64);
            let cfg = PooledMlpConfig {
                base_layer: -1,
                probe,
                ..Default::default()
            };
            let connector = PooledMlp::new(&cfg, (2, 4), 3, 5, store.init_builder(1)).unwrap();
            let input = features(Tensor::randn(0f64, 1.0, (2, 8, 3), &Device::Cpu).unwrap());
            check_store_gradients(
                &store,
                || {
                    let out = connector.forward(&input, None)?;
                    random_projection(out.tokens.as_ref().expect("prefix tokens"), 7)
                },
                &GradCheck::default(),
            )
            .unwrap();
        }
    }
}
