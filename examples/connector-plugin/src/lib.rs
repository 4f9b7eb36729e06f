//! `pooled-mlp`, an example connector plugin for vlmkit: see README.md.

mod pooled;

pub use pooled::{PooledMlp, PooledMlpConfig, PooledMlpFactory};

vlmkit_api::export_plugin!(PooledMlpFactory);
