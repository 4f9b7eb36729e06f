//! A LLaMA-family decoder (LLaMA, Vicuna, Mistral, Qwen2, SmolLM) with Hugging Face
//! `LlamaForCausalLM` weight names: RMSNorm, rotary embeddings, SwiGLU, grouped-
//! query attention, optional attention biases and tied embeddings. It runs over
//! input embeddings (so visual tokens can be spliced in), with a causal + padding
//! mask, a KV cache, and hook points before every decoder layer.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use vlmkit_core::nn::{
    AttentionConfig, Embedding, GatedFeedForward, Linear, LinearInit, MultiHeadAttention, RmsNorm,
    RopeTables,
};
use vlmkit_core::ops::Activation;
use vlmkit_core::{DecoderHooks, DecoderInput, KvCache, LanguageModel, LlmInfo};

/// `LlamaConfig`'s fields (same names and defaults as Hugging Face).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlamaConfig {
    /// Filled from the tokenizer when building from scratch.
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Defaults to `num_attention_heads` (no grouping).
    pub num_key_value_heads: Option<usize>,
    /// Defaults to `hidden_size / num_attention_heads`.
    pub head_dim: Option<usize>,
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v/o (LLaMA's `attention_bias`).
    pub attention_bias: bool,
    /// Biases on q/k/v only (Qwen2).
    pub qkv_bias: bool,
    pub initializer_range: f64,
    /// Mistral's sliding-window attention span. The window is not implemented:
    /// sequences longer than it are refused (shorter ones attend the same).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
}

impl Default for LlamaConfig {
    fn default() -> Self {
        Self {
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: None,
            head_dim: None,
            hidden_act: Activation::Silu,
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            tie_word_embeddings: false,
            attention_bias: false,
            qkv_bias: false,
            initializer_range: 0.02,
            sliding_window: None,
        }
    }
}

impl LlamaConfig {
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Problems with the configuration, as (key, message).
    pub fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        for (key, size) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if size == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        for (key, value) in [
            ("rms_norm_eps", self.rms_norm_eps),
            ("rope_theta", self.rope_theta),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err((key, format!("must be a positive number, found {value}")));
            }
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err((
                "num_attention_heads",
                format!(
                    "hidden_size {} is not a multiple of num_attention_heads {}",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        if self.kv_heads() == 0 || !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err((
                "num_key_value_heads",
                format!(
                    "{} attention heads cannot be grouped over {} key/value heads",
                    self.num_attention_heads,
                    self.kv_heads()
                ),
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err((
                "head_dim",
                format!(
                    "rotary embeddings need an even head_dim, got {}",
                    self.head_dim()
                ),
            ));
        }
        if self.hidden_act != Activation::Silu {
            return Err((
                "hidden_act",
                "LLaMA-family decoders use `silu` (SwiGLU)".into(),
            ));
        }
        Ok(())
    }

    pub fn info(&self) -> LlmInfo {
        LlmInfo {
            hidden_size: self.hidden_size,
            vocab_size: self.vocab_size,
            num_layers: self.num_hidden_layers,
            max_positions: self.max_position_embeddings,
        }
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: MultiHeadAttention,
    post_attention_layernorm: RmsNorm,
    mlp: GatedFeedForward,
}

impl DecoderLayer {
    fn new(cfg: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        let init = LinearInit::Normal(cfg.initializer_range);
        let attn = MultiHeadAttention::new(
            AttentionConfig {
                q_dim: cfg.hidden_size,
                kv_dim: cfg.hidden_size,
                out_dim: cfg.hidden_size,
                heads: cfg.num_attention_heads,
                kv_heads: cfg.kv_heads(),
                head_dim: cfg.head_dim(),
                qkv_bias: cfg.attention_bias || cfg.qkv_bias,
                out_bias: cfg.attention_bias,
                names: ["q_proj", "k_proj", "v_proj"],
                out_name: Some("o_proj"),
                init,
            },
            vb.pp("self_attn"),
        )?;
        Ok(Self {
            input_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("input_layernorm"),
            )?,
            self_attn: attn,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: GatedFeedForward::new(cfg.hidden_size, cfg.intermediate_size, init, vb.pp("mlp"))?,
        })
    }
}

/// `LlamaForCausalLM` (`model.*`, `lm_head.weight` unless tied).
#[derive(Debug, Clone)]
pub struct Llama {
    cfg: LlamaConfig,
    info: LlmInfo,
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
}

impl Llama {
    pub fn new(cfg: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        if let Err((key, msg)) = cfg.validate() {
            candle_core::bail!("language model config `{key}`: {msg}");
        }
        let model = vb.pp("model");
        let embed_tokens = Embedding::new(
            cfg.vocab_size,
            cfg.hidden_size,
            cfg.initializer_range,
            model.pp("embed_tokens"),
        )?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, model.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(Linear::new(
                cfg.hidden_size,
                cfg.vocab_size,
                false,
                LinearInit::Normal(cfg.initializer_range),
                vb.pp("lm_head"),
            )?)
        };
        Ok(Self {
            info: cfg.info(),
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, model.pp("norm"))?,
            lm_head,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }
}

impl LanguageModel for Llama {
    fn info(&self) -> &LlmInfo {
        &self.info
    }

    fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed_tokens.forward(ids)
    }

    fn forward(
        &self,
        embeds: &Tensor,
        input: &DecoderInput,
        mut cache: Option<&mut KvCache>,
        hooks: Option<&dyn DecoderHooks>,
    ) -> Result<Tensor> {
        let (b, t, d) = embeds.dims3()?;
        if d != self.cfg.hidden_size {
            candle_core::bail!(
                "language model expects embeddings of width {}, got shape {:?}",
                self.cfg.hidden_size,
                embeds.dims()
            );
        }
        if input.positions.dims() != [b, t] {
            candle_core::bail!(
                "positions of shape {:?} do not fit embeddings of shape {:?}",
                input.positions.dims(),
                embeds.dims()
            );
        }
        if let Some(window) = self.cfg.sliding_window {
            let keys = input.mask.dim(2)?;
            if keys > window {
                candle_core::bail!(
                    "a sequence of {keys} tokens is longer than the model's sliding window of {window}, which is not implemented"
                );
            }
        }
        if let Some(cache) = cache.as_deref_mut() {
            if cache.layers.len() != self.layers.len() {
                *cache = KvCache::new(self.layers.len());
            }
        }
        let rope = RopeTables::new(
            &input.positions,
            self.cfg.head_dim(),
            self.cfg.rope_theta,
            embeds.dtype(),
        )?;
        let mut x = embeds.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some(hooks) = hooks {
                x = hooks.before_layer(i, &x)?;
            }
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            let attn = layer.self_attn.forward_self(
                &layer.input_layernorm.forward(&x)?,
                Some(&input.mask),
                Some(&rope),
                layer_cache,
            )?;
            let h = (&x + attn.output)?;
            x = (&h
                + layer
                    .mlp
                    .forward(&layer.post_attention_layernorm.forward(&h)?)?)?;
        }
        self.norm.forward(&x)
    }

    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => vlmkit_core::ops::linear(hidden, self.embed_tokens.weight(), None),
        }
    }
}
