//! Differentiable ops whose backward can be trusted.
//!
//! candle 0.11's fused `softmax_last_dim`, `layer_norm`, `rms_norm` and `rope` are
//! applied without recording a backward, so gradients silently stop at them, and
//! `scatter_add`'s backward zeroes the gradient of its destination. Training in
//! vlmkit goes only through the ops here: each is a custom op with a fused CPU kernel
//! and a fused backward (on other devices, a composition of candle ops with known-
//! good backwards), each checked against finite differences and against its
//! `reference` composition in the tests.

mod kernel;

pub mod activation;
pub mod attention;
pub mod depthwise;
pub mod fused;
pub mod grounding;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod rope;
pub mod softmax;

pub use activation::{swiglu, Activation};
pub use attention::{
    additive_key_mask, attention, attention_tracked, causal_mask, padding_mask, Attended,
};
pub use depthwise::depthwise_conv2d;
pub use grounding::dice_loss;
pub use kernel::set_intra_op_threads;
pub use linear::{linear, matmul};
pub use loss::{cross_entropy, label_log_probs, IGNORE_INDEX};
pub use norm::{layer_norm, rms_norm};
pub use rope::{rope, rope_tables};
pub use softmax::{log_softmax_last_dim, masked_softmax, softmax_last_dim};

use candle_core::Tensor;

/// `param` in the dtype of the activations `x` it meets. With f32 master weights
/// and bf16 compute the cast is recorded, so its gradient reaches the f32 master
/// in f32; with equal dtypes it is the parameter itself.
pub fn cast_like(param: &Tensor, x: &Tensor) -> candle_core::Result<Tensor> {
    param.to_dtype(x.dtype())
}

pub(crate) fn is_cpu(t: &Tensor) -> bool {
    t.device().is_cpu()
}

/// Whether a backward must produce a gradient for `t`: it is a trainable variable or
/// was computed from one. Frozen weights are plain tensors and answer no.
pub(crate) fn needs_grad(t: &Tensor) -> bool {
    t.track_op()
}
