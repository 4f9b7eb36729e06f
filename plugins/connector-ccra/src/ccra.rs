//! The CCRA module: `shared/spec/connectors.md` § ccra, equation by equation.

use std::collections::BTreeMap;

use vlmkit_plugin::candle_core::{DType, Result, Tensor, D};
use vlmkit_plugin::prelude::*;

use crate::config::{CcraConfig, Integration, MapNorm};

const LN_EPS: f64 = 1e-5;

/// `x·Wᵀ + b` for every projection: the spec's initialisation is PyTorch's.
fn projection(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<nn::Linear> {
    nn::Linear::new(in_dim, out_dim, true, nn::LinearInit::Torch, vb)
}

/// Token importance α (Eq. 2): single-head self-attention over the query tokens
/// (the core's attention block without an output projection), a scalar score per
/// token, and a masked softmax over tokens.
struct TokenImportance {
    attn: nn::MultiHeadAttention,
    score: nn::Linear,
}

impl TokenImportance {
    fn new(text_dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        let attn = nn::MultiHeadAttention::new(
            nn::AttentionConfig {
                q_dim: text_dim,
                kv_dim: text_dim,
                out_dim: hidden,
                heads: 1,
                kv_heads: 1,
                head_dim: hidden,
                qkv_bias: true,
                out_bias: true,
                names: ["q", "k", "v"],
                out_name: None,
                init: nn::LinearInit::Torch,
            },
            vb.clone(),
        )?;
        Ok(Self {
            attn,
            score: projection(hidden, 1, vb.pp("score"))?,
        })
    }

    /// `text`: B×T×d_t, `key_mask`: additive B×1×T → α: B×T.
    fn forward(&self, text: &Tensor, key_mask: &Tensor) -> Result<Tensor> {
        let (b, t, _) = text.dims3()?;
        let mask = key_mask.broadcast_as((b, t, t))?.contiguous()?;
        let h = self
            .attn
            .forward_self(text, Some(&mask), None, None)?
            .output;
        let s = self.score.forward(&h)?.reshape((b, 1, 1, t))?;
        ops::masked_softmax(&s, Some(key_mask), 1.0)?.reshape((b, t))
    }
}

/// The query that guides every map: its token embeddings `F_t` (B×T×d_t) and
/// their importance α (B×T).
struct Guide<'a> {
    text: &'a Tensor,
    alpha: Tensor,
}

/// A text-guided score over a set of positions:
/// `α^T ((F_t Q)(F K)^T / √h)`, one value per position.
struct TextGuidedScore {
    q: nn::Linear,
    k: nn::Linear,
    scale: f64,
}

impl TextGuidedScore {
    fn new(text_dim: usize, feature_dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            q: projection(text_dim, hidden, vb.pp("q"))?,
            k: projection(feature_dim, hidden, vb.pp("k"))?,
            scale: 1.0 / (hidden as f64).sqrt(),
        })
    }

    /// `features`: B×P×d → B×P.
    fn forward(&self, guide: &Guide, features: &Tensor) -> Result<Tensor> {
        // α^T(Q Kᵀ) = (α^T Q) Kᵀ: the T×P score matrix is never formed.
        let query = ops::matmul(&guide.alpha.unsqueeze(1)?, &self.q.forward(guide.text)?)?;
        let keys = self.k.forward(features)?;
        ops::matmul(&query, &keys.transpose(1, 2)?.contiguous()?)?.squeeze(1)? * self.scale
    }
}

/// `ŵ = (g ∗ p) / Σ(g ∗ p)` for layer weights `p` (B×L) and the smoothing matrix.
pub(crate) fn smooth(p: &Tensor, matrix: &Tensor) -> Result<Tensor> {
    let smoothed = ops::matmul(p, &ops::cast_like(matrix, p)?.t()?.contiguous()?)?;
    smoothed.broadcast_div(&smoothed.sum_keepdim(1)?)
}

/// `G = |P|·softmax_P(score)` (a mean-one weight), or the raw score.
pub(crate) fn normalise_map(score: &Tensor, norm: MapNorm) -> Result<Tensor> {
    match norm {
        MapNorm::None => Ok(score.clone()),
        MapNorm::Softmax => {
            let positions = score.dim(D::Minus1)? as f64;
            ops::softmax_last_dim(score)? * positions
        }
    }
}

/// The 1-D Gaussian correlation over the layer axis with zero padding, as an
/// `L×L` matrix `S` with `(g ∗ p) = p·Sᵀ`: `S[l][j] = g_{j−l}` within the kernel.
pub(crate) fn smoothing_matrix(layers: usize, kernel_size: usize, sigma: f64) -> Vec<f32> {
    let half = (kernel_size / 2) as i64;
    let mut m = vec![0f32; layers * layers];
    for l in 0..layers as i64 {
        for j in (l - half).max(0)..=(l + half).min(layers as i64 - 1) {
            let i = (j - l) as f64;
            m[(l as usize) * layers + j as usize] = (-(i * i) / (2.0 * sigma * sigma)).exp() as f32;
        }
    }
    m
}

/// What CCRA computed besides its tokens.
#[derive(Default)]
struct Maps(BTreeMap<String, Tensor>);

impl Maps {
    fn put(&mut self, name: &str, t: &Tensor) {
        self.0.insert(name.to_owned(), t.clone());
    }
}

type ModulatingStage = (TextGuidedScore, nn::SpatialLayerNorm);

/// Consistent Cross-layer Regional Alignment.
pub struct CcraConnector {
    cfg: CcraConfig,
    /// Position in the stacked layers of the one fused with the regional features.
    residual_position: usize,
    token_attn: TokenImportance,
    lpwca: Option<ModulatingStage>,
    lwca: Option<TextGuidedScore>,
    lwca_norm: nn::LayerNorm,
    pwca: Option<ModulatingStage>,
    smoothing: Option<Tensor>,
    proj: nn::FeedForward,
}

/// Model widths CCRA is built for.
#[derive(Debug, Clone, Copy)]
pub struct CcraDims {
    pub layers: usize,
    pub vision: usize,
    pub text: usize,
    pub llm: usize,
}

impl CcraConnector {
    /// `residual_position`: index into the stacked layers of the residual layer.
    pub fn new(
        cfg: &CcraConfig,
        dims: CcraDims,
        residual_position: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let h = cfg.d_hidden;
        let (dv, dt) = (dims.vision, dims.text);
        // LPWCA and PWCA: a text-guided map and a norm spanning patches and channels.
        let modulating = |enabled: bool, name: &str| -> Result<Option<ModulatingStage>> {
            enabled
                .then(|| {
                    Ok((
                        TextGuidedScore::new(dt, dv, h, vb.pp(name))?,
                        nn::SpatialLayerNorm::new(dv, LN_EPS, vb.pp(name).pp("norm"))?,
                    ))
                })
                .transpose()
        };
        let lpwca = modulating(cfg.lpwca, "lpwca")?;
        let lwca = if cfg.lwca {
            Some(TextGuidedScore::new(dt, dv, h, vb.pp("lwca"))?)
        } else {
            None
        };
        let pwca = modulating(cfg.pwca, "pwca")?;
        let smoothing = if cfg.lwca && cfg.smoothing {
            let m = smoothing_matrix(dims.layers, cfg.kernel_size, cfg.sigma);
            Some(
                Tensor::from_vec(m, (dims.layers, dims.layers), vb.device())?
                    .to_dtype(vb.dtype())?,
            )
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            residual_position,
            token_attn: TokenImportance::new(dt, h, vb.pp("token_attn"))?,
            lpwca,
            lwca,
            lwca_norm: nn::LayerNorm::new(dv, LN_EPS, vb.pp("lwca").pp("norm"))?,
            pwca,
            smoothing,
            proj: nn::mlp_projector(2 * dv, dims.llm, vb.pp("proj"))?,
        })
    }

    /// LPWCA (Eqs. 1–5): `F_lp = Norm_lp(V ⊙ G_lp + V)` over all (layer, patch) pairs.
    fn layer_patch(&self, v: &Tensor, guide: &Guide, maps: &mut Maps) -> Result<Tensor> {
        let Some((score, norm)) = &self.lpwca else {
            return Ok(v.clone());
        };
        let (b, l, n, d) = v.dims4()?;
        let g = normalise_map(
            &score.forward(guide, &v.reshape((b, l * n, d))?)?,
            self.cfg.map_norm,
        )?
        .reshape((b, l, n))?;
        maps.put("lp", &g);
        norm.forward(&(v.broadcast_mul(&g.unsqueeze(3)?)? + v)?)
    }

    /// LWCA (Eqs. 6–10) on `F` (B×L×N×d): smoothed layer weights, the weighted sum
    /// `F̂`, and `F_sem = LN_sem(F̂ + mean_N(F̂))`.
    fn layer_wise(&self, f: &Tensor, guide: &Guide, maps: &mut Maps) -> Result<Tensor> {
        let (b, l, n, d) = f.dims4()?;
        let (raw, weights) = self.layer_weights(f, guide)?;
        if let Some(raw) = &raw {
            maps.put("layer_raw", raw);
        }
        maps.put("layer", &weights);
        let fused =
            ops::matmul(&weights.unsqueeze(1)?, &f.reshape((b, l, n * d))?)?.reshape((b, n, d))?;
        self.lwca_norm
            .forward(&fused.broadcast_add(&fused.mean_keepdim(1)?)?)
    }

    /// LWCA's layer weights `ŵ` (B×L) on `f`'s layer descriptors `mean_N(f)`,
    /// with the unsmoothed `p` beside them; `1/L` each without LWCA.
    fn layer_weights(&self, f: &Tensor, guide: &Guide) -> Result<(Option<Tensor>, Tensor)> {
        let (b, l, _, _) = f.dims4()?;
        let Some(score) = &self.lwca else {
            let uniform = Tensor::full(1.0 / l as f64, (b, l), f.device())?.to_dtype(f.dtype())?;
            return Ok((None, uniform));
        };
        let p = ops::softmax_last_dim(&score.forward(guide, &f.mean(2)?)?)?;
        let weights = match &self.smoothing {
            None => p.clone(),
            Some(m) => smooth(&p, m)?,
        };
        Ok((Some(p), weights))
    }

    /// The PWCA patch map `G_p` (B×N) computed on `features` (B×N×d).
    fn patch_map(
        &self,
        score: &TextGuidedScore,
        features: &Tensor,
        guide: &Guide,
        maps: &mut Maps,
    ) -> Result<Tensor> {
        let raw = score.forward(guide, features)?;
        if self.cfg.consistency_maps {
            // p* = softmax_p(score(F, pwca)), whatever `map_norm`.
            maps.put(
                "consistency.final",
                &ops::softmax_last_dim(&raw.to_dtype(DType::F32)?)?,
            );
        }
        let g = normalise_map(&raw, self.cfg.map_norm)?;
        maps.put("patch", &g);
        Ok(g)
    }

    /// The consistency metrics' maps of a stack `x` (B×L×N×d): each layer's
    /// PWCA distribution over patches (`consistency.<name>`, B×L×N) and LWCA's
    /// weights on its layer descriptors (`consistency.<name>_weights`, B×L; the
    /// uniform ones without LWCA). Computed in f32; nothing trains through them.
    fn consistency(&self, x: &Tensor, guide: &Guide, name: &str, maps: &mut Maps) -> Result<()> {
        let Some((score, _)) = &self.pwca else {
            return Ok(());
        };
        let (b, l, n, d) = x.dims4()?;
        let scores = score
            .forward(guide, &x.reshape((b, l * n, d))?)?
            .reshape((b, l, n))?;
        let distributions = ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?;
        maps.put(&format!("consistency.{name}"), &distributions);
        let (_, weights) = self.layer_weights(x, guide)?;
        maps.put(
            &format!("consistency.{name}_weights"),
            &weights.to_dtype(DType::F32)?,
        );
        Ok(())
    }

    /// `Norm_p(F ⊙ (1 + G_p))`, `G_p` (B×N) broadcast over any layer axis of `F`.
    fn modulate(norm: &nn::SpatialLayerNorm, f: &Tensor, g: &Tensor) -> Result<Tensor> {
        let mut g = (g + 1.0)?.unsqueeze(D::Minus1)?;
        if f.rank() == 4 {
            g = g.unsqueeze(1)?;
        }
        norm.forward(&f.broadcast_mul(&g)?)
    }

    /// The regional features `F_reg` (B×N×d) in the configured integration order.
    fn regional(&self, v: &Tensor, guide: &Guide, maps: &mut Maps) -> Result<Tensor> {
        let f_lp = self.layer_patch(v, guide, maps)?;
        if self.cfg.consistency_maps {
            self.consistency(v, guide, "stack", maps)?;
            self.consistency(&f_lp, guide, "lp", maps)?;
        }
        match (self.cfg.integration, &self.pwca) {
            // Without PWCA the orders coincide.
            (_, None) => self.layer_wise(&f_lp, guide, maps),
            (Integration::Progressive, Some((score, norm))) => {
                let f_sem = self.layer_wise(&f_lp, guide, maps)?;
                let g = self.patch_map(score, &f_sem, guide, maps)?;
                Self::modulate(norm, &f_sem, &g)
            }
            (Integration::Shuffled, Some((score, norm))) => {
                let g = self.patch_map(score, &f_lp.mean(1)?, guide, maps)?;
                let shuffled = Self::modulate(norm, &f_lp, &g)?;
                self.layer_wise(&shuffled, guide, maps)
            }
            (Integration::Decoupled, Some((score, norm))) => {
                let f_a = self.layer_wise(&f_lp, guide, maps)?;
                let layer_mean = f_lp.mean(1)?;
                let g = self.patch_map(score, &layer_mean, guide, maps)?;
                let f_b = Self::modulate(norm, &layer_mean, &g)?;
                self.lwca_norm.forward(&(f_a + f_b)?)
            }
        }
    }
}

impl Connector for CcraConnector {
    fn forward(
        &self,
        vision: &VisualFeatures,
        text: Option<&TextContext>,
    ) -> Result<ConnectorOutput> {
        let Some(text) = text else {
            vlmkit_plugin::candle_core::bail!(
                "ccra reads the query text, but no text context was given"
            );
        };
        let v = Tensor::stack(&vision.layers, 1)?;
        let key_mask = ops::additive_key_mask(&text.mask)?;
        let alpha = self.token_attn.forward(&text.embeds, &key_mask)?;
        let mut maps = Maps::default();
        maps.put("alpha", &alpha);
        let guide = Guide {
            text: &text.embeds,
            alpha,
        };
        let f_reg = self.regional(&v, &guide, &mut maps)?;
        let residual = &vision.layers[self.residual_position];
        let fused = Tensor::cat(&[&f_reg, residual], 2)?;
        Ok(ConnectorOutput {
            tokens: Some(self.proj.forward(&fused)?),
            maps: maps.0,
            ..Default::default()
        })
    }
}
