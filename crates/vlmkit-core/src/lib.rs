//! vlmkit's core: the traits that divide a vision-language model into a vision
//! encoder, a connector and a language model; the data that crosses them; the
//! differentiable ops and shared layers every model and connector is built from;
//! named parameters; and the assembled model.

pub mod error;
pub mod fsutil;
pub mod gradcheck;
pub mod hub;
pub mod loss;
pub mod model;
pub mod nn;
pub mod ops;
pub mod params;
pub mod rng;
pub mod vlm;

pub use candle_core;
pub use candle_nn;
pub use error::{Error, Result};
pub use loss::{Average, HostLoss, LossRegistry};
pub use model::{
    Connector, ConnectorNeeds, ConnectorOutput, DecoderHooks, DecoderInput, KvCache, LanguageModel,
    LlmInfo, Placement, TextContext, VisionEncoder, VisionInfo, VisualFeatures,
};
pub use vlm::{GenerateOptions, LossOutput, TokenSequence, Vlm, VlmBatch};
