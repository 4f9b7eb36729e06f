//! Shared layers, built on [`crate::ops`]. Models and connectors use these instead of
//! their own copies; weight names are passed in so each can mirror its reference
//! implementation's safetensors keys.

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::ops::{self, Activation};

/// Initialisation of a [`Linear`]'s weight and bias.
#[derive(Debug, Clone, Copy)]
pub enum LinearInit {
    /// PyTorch's `nn.Linear` default: weight and bias uniform in ±1/√in.
    Torch,
    /// Hugging Face's `_init_weights`: weight normal(0, std), bias zero.
    Normal(f64),
    /// All zeros (e.g. a gate that must start closed).
    Zeros,
}

/// A `k`×`k`, stride-`k` convolution (a patch embedding, a downsampling layer) on
/// channels-last `x` (`B×H×W×C`), as a linear map of each unfolded patch: `weight`
/// is the conv's `[C_out, C, k, k]`. Returns `B×(H/k)×(W/k)×C_out`.
pub fn patch_conv(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, k: usize) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let out = weight.dim(0)?;
    let (gh, gw) = (h / k, w / k);
    // Patch vectors in the weight's (C, ky, kx) order.
    let patches = x
        .reshape((b, gh, k, gw, k, c))?
        .permute((0, 1, 3, 5, 2, 4))?
        .reshape((b, gh * gw, c * k * k))?;
    ops::linear(&patches, &weight.reshape((out, c * k * k))?, bias)?.reshape((b, gh, gw, out))
}

/// `y = x·Wᵀ + b`; weight `out×in` under `weight`, bias under `bias`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        init: LinearInit,
        vb: VarBuilder,
    ) -> Result<Self> {
        let bound = 1.0 / (in_dim.max(1) as f64).sqrt();
        let (w_init, b_init) = match init {
            LinearInit::Torch => (
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            ),
            LinearInit::Normal(std) => (
                Init::Randn {
                    mean: 0.0,
                    stdev: std,
                },
                Init::Const(0.0),
            ),
            LinearInit::Zeros => (Init::Const(0.0), Init::Const(0.0)),
        };
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", w_init)?;
        let bias = if bias {
            Some(vb.get_with_hints(out_dim, "bias", b_init)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::linear(x, &self.weight, self.bias.as_ref())
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }
}

/// LayerNorm over the last dimension (`weight`, `bias`).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", Init::Const(0.0))?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// LayerNorm over the last two axes together (tokens × channels) with a
/// per-channel affine (`weight`, `bias` of the channel width). A per-token LayerNorm
/// cancels any positive per-token scale; this one normalises each map as a whole,
/// so a token weighting survives it.
#[derive(Debug, Clone)]
pub struct SpatialLayerNorm(LayerNorm);

impl SpatialLayerNorm {
    pub fn new(channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self(LayerNorm::new(channels, eps, vb)?))
    }

    /// `x`: `…×N×d`; each `N×d` map is normalised on its own.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() < 2 {
            candle_core::bail!(
                "spatial layer norm needs a …×N×d input, got shape {:?}",
                dims
            );
        }
        let mut flat = dims[..dims.len() - 2].to_vec();
        flat.push(dims[dims.len() - 2] * dims[dims.len() - 1]);
        // The LayerNorm op's affine may be shorter than the row: element i uses
        // weight[i % d], the per-channel affine over a flattened map.
        self.0.forward(&x.reshape(flat)?)?.reshape(dims)
    }
}

/// RMSNorm over the last dimension (`weight`).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::rms_norm(x, &self.weight, self.eps)
    }
}

/// A lookup table (`weight`: `vocab×dim`).
#[derive(Debug, Clone)]
pub struct Embedding {
    weight: Tensor,
}

impl Embedding {
    pub fn new(vocab: usize, dim: usize, std: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(
                (vocab, dim),
                "weight",
                Init::Randn {
                    mean: 0.0,
                    stdev: std,
                },
            )?,
        })
    }

    /// Looks up `ids` of any shape; the result has one more dimension.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut dims = ids.dims().to_vec();
        dims.push(self.weight.dim(1)?);
        self.weight
            .index_select(&ids.flatten_all()?, 0)?
            .reshape(dims)
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

/// Two linear layers with an activation between them: `fc2(act(fc1(x)))`.
/// Serves CLIP's MLP (`fc1`, `fc2`), LLaVA's projector (`0`, `2`), and the
/// feed-forward blocks of connectors.
#[derive(Debug, Clone)]
pub struct FeedForward {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

/// Shape and naming of a [`FeedForward`].
#[derive(Debug, Clone, Copy)]
pub struct FeedForwardConfig<'a> {
    pub in_dim: usize,
    pub hidden_dim: usize,
    pub out_dim: usize,
    pub act: Activation,
    pub bias: bool,
    pub names: (&'a str, &'a str),
    pub init: LinearInit,
}

impl FeedForward {
    pub fn new(cfg: FeedForwardConfig, vb: VarBuilder) -> Result<Self> {
        Self::new_with_inits(cfg, cfg.init, vb)
    }

    /// As [`FeedForward::new`], with a separate initialisation for the second layer.
    pub fn new_with_inits(
        cfg: FeedForwardConfig,
        fc2_init: LinearInit,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            fc1: Linear::new(
                cfg.in_dim,
                cfg.hidden_dim,
                cfg.bias,
                cfg.init,
                vb.pp(cfg.names.0),
            )?,
            fc2: Linear::new(
                cfg.hidden_dim,
                cfg.out_dim,
                cfg.bias,
                fc2_init,
                vb.pp(cfg.names.1),
            )?,
            act: cfg.act,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.act.forward(&self.fc1.forward(x)?)?)
    }
}

/// LLaVA-1.5's `mlp2x_gelu` projector: `proj.0` (in→out), GELU, `proj.2` (out→out).
/// Its weights live under the `vb` given (callers pass `vb.pp("proj")`).
pub fn mlp_projector(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<FeedForward> {
    FeedForward::new(
        FeedForwardConfig {
            in_dim,
            hidden_dim: out_dim,
            out_dim,
            act: Activation::Gelu,
            bias: true,
            names: ("0", "2"),
            init: LinearInit::Torch,
        },
        vb,
    )
}

/// LLaMA's gated feed-forward: `down(silu(gate(x)) ⊙ up(x))`, no biases.
#[derive(Debug, Clone)]
pub struct GatedFeedForward {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl GatedFeedForward {
    pub fn new(dim: usize, hidden: usize, init: LinearInit, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            gate: Linear::new(dim, hidden, false, init, vb.pp("gate_proj"))?,
            up: Linear::new(dim, hidden, false, init, vb.pp("up_proj"))?,
            down: Linear::new(hidden, dim, false, init, vb.pp("down_proj"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.down
            .forward(&ops::swiglu(&self.gate.forward(x)?, &self.up.forward(x)?)?)
    }
}

/// Key/value tensors kept between decoding steps (`B×KV×S×D` each).
#[derive(Debug, Clone, Default)]
pub struct LayerKv {
    pub kv: Option<(Tensor, Tensor)>,
}

/// Shape, biases and weight names of a [`MultiHeadAttention`].
#[derive(Debug, Clone, Copy)]
pub struct AttentionConfig<'a> {
    /// Width of the query input.
    pub q_dim: usize,
    /// Width of the key/value input (the memory, for cross-attention).
    pub kv_dim: usize,
    /// Width of the output (with an output projection).
    pub out_dim: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub qkv_bias: bool,
    pub out_bias: bool,
    /// Names of the q, k and v projections.
    pub names: [&'a str; 3],
    /// Name of the output projection; `None` returns the merged heads
    /// (`heads·head_dim` wide) as they are.
    pub out_name: Option<&'a str>,
    pub init: LinearInit,
}

/// Multi-head (grouped-query) attention with separate q/k/v/o projections: self- or
/// cross-attention, optional rotary embeddings, optional KV cache.
#[derive(Debug, Clone)]
pub struct MultiHeadAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Option<Linear>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// The attention output and the probabilities behind it (`B×H×T×S`).
#[derive(Debug, Clone)]
pub struct AttentionOutput {
    pub output: Tensor,
    pub probs: Tensor,
}

impl MultiHeadAttention {
    pub fn new(cfg: AttentionConfig, vb: VarBuilder) -> Result<Self> {
        Self::new_with_inits(cfg, cfg.init, vb)
    }

    /// As [`MultiHeadAttention::new`], with a separate initialisation for the output
    /// projection.
    pub fn new_with_inits(
        cfg: AttentionConfig,
        out_init: LinearInit,
        vb: VarBuilder,
    ) -> Result<Self> {
        if cfg.kv_heads == 0 || !cfg.heads.is_multiple_of(cfg.kv_heads) {
            candle_core::bail!(
                "attention: {} heads cannot share {} key/value heads",
                cfg.heads,
                cfg.kv_heads
            );
        }
        let [qn, kn, vn] = cfg.names;
        Ok(Self {
            q: Linear::new(
                cfg.q_dim,
                cfg.heads * cfg.head_dim,
                cfg.qkv_bias,
                cfg.init,
                vb.pp(qn),
            )?,
            k: Linear::new(
                cfg.kv_dim,
                cfg.kv_heads * cfg.head_dim,
                cfg.qkv_bias,
                cfg.init,
                vb.pp(kn),
            )?,
            v: Linear::new(
                cfg.kv_dim,
                cfg.kv_heads * cfg.head_dim,
                cfg.qkv_bias,
                cfg.init,
                vb.pp(vn),
            )?,
            o: cfg
                .out_name
                .map(|on| {
                    Linear::new(
                        cfg.heads * cfg.head_dim,
                        cfg.out_dim,
                        cfg.out_bias,
                        out_init,
                        vb.pp(on),
                    )
                })
                .transpose()?,
            heads: cfg.heads,
            kv_heads: cfg.kv_heads,
            head_dim: cfg.head_dim,
        })
    }

    /// Projects a memory (`B×S×kv_dim`) to keys and values (`B×KV×S×D`), e.g. once per
    /// image for cross-attention during generation.
    pub fn project_kv(
        &self,
        memory: &Tensor,
        rope: Option<&RopeTables>,
    ) -> Result<(Tensor, Tensor)> {
        let (b, s, _) = memory.dims3()?;
        let k = self
            .k
            .forward(memory)?
            .reshape((b, s, self.kv_heads, self.head_dim))?;
        let k = match rope {
            Some(r) => r.apply(&k)?,
            None => k,
        };
        let v = self
            .v
            .forward(memory)?
            .reshape((b, s, self.kv_heads, self.head_dim))?;
        Ok((
            k.transpose(1, 2)?.contiguous()?,
            v.transpose(1, 2)?.contiguous()?,
        ))
    }

    /// Self-attention of `x` (`B×T×q_dim`); with a cache, the new keys/values are
    /// appended to the cached ones and `mask` must cover all of them.
    pub fn forward_self(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        rope: Option<&RopeTables>,
        cache: Option<&mut LayerKv>,
    ) -> Result<AttentionOutput> {
        let (k, v) = self.project_kv(x, rope)?;
        let (k, v) = match cache {
            Some(cache) => {
                let kv = match cache.kv.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                cache.kv = Some(kv.clone());
                kv
            }
            None => (k, v),
        };
        self.forward_kv(x, &k, &v, mask, rope)
    }

    /// Attention of `x` over precomputed keys and values; the probabilities are
    /// detached (for analysis).
    pub fn forward_kv(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        rope: Option<&RopeTables>,
    ) -> Result<AttentionOutput> {
        self.attend(x, k, v, mask, rope, ops::attention)
    }

    /// As [`MultiHeadAttention::forward_kv`], with the probabilities in the
    /// autograd graph: for losses on the attention map (slower; train with it
    /// only where such a loss reads the map).
    pub fn forward_kv_tracked(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        rope: Option<&RopeTables>,
    ) -> Result<AttentionOutput> {
        self.attend(x, k, v, mask, rope, ops::attention_tracked)
    }

    fn attend(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        rope: Option<&RopeTables>,
        attention: fn(&Tensor, &Tensor, &Tensor, Option<&Tensor>, f64) -> Result<ops::Attended>,
    ) -> Result<AttentionOutput> {
        let (b, t, _) = x.dims3()?;
        let q = self
            .q
            .forward(x)?
            .reshape((b, t, self.heads, self.head_dim))?;
        let q = match rope {
            Some(r) => r.apply(&q)?,
            None => q,
        };
        let q = q.transpose(1, 2)?.contiguous()?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let att = attention(&q, k, v, mask, scale)?;
        let merged = att
            .output
            .transpose(1, 2)?
            .reshape((b, t, self.heads * self.head_dim))?;
        Ok(AttentionOutput {
            output: match &self.o {
                Some(o) => o.forward(&merged)?,
                None => merged,
            },
            probs: att.probs,
        })
    }
}

/// Rotary-embedding tables for a set of positions (`T` shared, or `B×T`).
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl RopeTables {
    pub fn new(
        positions: &Tensor,
        head_dim: usize,
        theta: f64,
        dtype: candle_core::DType,
    ) -> Result<Self> {
        let (cos, sin) = ops::rope_tables(positions, head_dim, theta, dtype)?;
        Ok(Self { cos, sin })
    }

    /// Rotates `x` (`B×T×H×D`).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        ops::rope(x, &self.cos, &self.sin)
    }
}
