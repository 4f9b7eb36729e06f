//! `[connector]` settings of `kind = "ccra"`: every switch the paper studies.

use serde::{Deserialize, Serialize};

/// How a text-guided score becomes a weight over positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapNorm {
    /// `|P|·softmax_P(score)`: a mean-one weight (the default).
    Softmax,
    /// The raw score (the paper's literal form).
    None,
}

/// The order of the three attentions (paper Table 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Integration {
    /// LPWCA → LWCA → PWCA.
    Progressive,
    /// LPWCA → PWCA (on the layer mean, applied to every layer) → LWCA.
    Shuffled,
    /// LPWCA, then LWCA and PWCA side by side on its output.
    Decoupled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CcraConfig {
    /// Width `h` of every attention projection.
    pub d_hidden: usize,
    /// Width of the Gaussian kernel over the layer axis (odd).
    pub kernel_size: usize,
    /// Standard deviation of the Gaussian kernel, in layers.
    pub sigma: f64,
    pub map_norm: MapNorm,
    /// Ablations (paper Table 4): each attention, and the smoothing, can be off.
    pub lpwca: bool,
    pub lwca: bool,
    pub pwca: bool,
    pub smoothing: bool,
    pub integration: Integration,
    /// The hidden state concatenated with the regional features (HF index,
    /// negative from the end); by default the last selected layer.
    pub residual_layer: Option<i64>,
    /// Also emit the maps CCRA's consistency metrics read (paper Table 2;
    /// `shared/spec/analysis.md` §1): per-layer PWCA distributions on the
    /// stack before and after LPWCA, the final one, and LWCA's weights on
    /// both. Analysis only: they change no output.
    pub consistency_maps: bool,
}

impl Default for CcraConfig {
    fn default() -> Self {
        Self {
            d_hidden: 128,
            kernel_size: 5,
            sigma: 1.0,
            map_norm: MapNorm::Softmax,
            lpwca: true,
            lwca: true,
            pwca: true,
            smoothing: true,
            integration: Integration::Progressive,
            residual_layer: None,
            consistency_maps: false,
        }
    }
}

impl CcraConfig {
    /// Weights the spec lists that cannot change the output, so they get a zero
    /// gradient: whatever adds the same value to every score of a softmax. That is
    /// the token score's `b_s`, and `b_v` before it (attention rows sum to one, so
    /// it adds `b_v·w_s` to every token's score); and a key bias, which adds `q·b_k`
    /// to every key's score alike, in the token self-attention and in the maps. With `map_norm = "none"` the LPWCA and PWCA scores
    /// are used raw and their key biases do matter.
    pub fn softmax_invariant_params(&self) -> Vec<&'static str> {
        let mut names = vec![
            "token_attn.k.bias",
            "token_attn.v.bias",
            "token_attn.score.bias",
        ];
        if self.lwca {
            names.push("lwca.k.bias");
        }
        if self.map_norm == MapNorm::Softmax {
            if self.lpwca {
                names.push("lpwca.k.bias");
            }
            if self.pwca {
                names.push("pwca.k.bias");
            }
        }
        names
    }

    /// Problems with the settings on their own, as (key, message).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.d_hidden == 0 {
            return Err(("d_hidden", "must be at least 1".into()));
        }
        if self.kernel_size.is_multiple_of(2) {
            return Err((
                "kernel_size",
                format!(
                    "must be odd: the Gaussian kernel is centred on each layer, with (k-1)/2 layers on either side; got {}",
                    self.kernel_size
                ),
            ));
        }
        if !(self.sigma.is_finite() && self.sigma > 0.0) {
            return Err((
                "sigma",
                format!("must be a positive number, got {}", self.sigma),
            ));
        }
        if self.consistency_maps && !(self.lpwca && self.pwca) {
            return Err((
                "consistency_maps",
                "CCRA's consistency metrics compare the stack before and after LPWCA through PWCA's \
                 projections: they need lpwca = true and pwca = true"
                    .into(),
            ));
        }
        Ok(())
    }
}
