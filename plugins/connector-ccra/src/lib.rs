//! CCRA — Consistent Cross-layer Regional Alignment — as a vlmkit connector.
//!
//! The stacked hidden states of many vision layers and the user's question become
//! visual tokens through three text-guided attentions: layer-patch-wise (LPWCA),
//! Gaussian-smoothed layer-wise (LWCA) and patch-wise (PWCA); the regional result
//! is fused with the last selected layer by LLaVA's MLP projector. The math and
//! the weight names follow `shared/spec/connectors.md` § ccra.

mod ccra;
mod config;

pub use ccra::{CcraConnector, CcraDims};
pub use config::{CcraConfig, Integration, MapNorm};

use vlmkit_plugin::prelude::*;
use vlmkit_plugin::BuildError;

pub struct CcraFactory;

impl CcraFactory {
    /// Position in the selected layers of the layer fused with the regional
    /// features: `residual_layer`, or the last selected one.
    fn residual_position(cfg: &CcraConfig, env: &ConnectorEnv) -> Result<usize, ConfigError> {
        match cfg.residual_layer {
            None => Ok(env.layers.len() - 1),
            Some(index) => {
                let abs = env.selected("residual_layer", index)?;
                Ok(env.layers.iter().position(|&l| l == abs).expect("selected"))
            }
        }
    }
}

impl ConnectorFactory for CcraFactory {
    type Config = CcraConfig;

    const KIND: &'static str = "ccra";
    const SUMMARY: &'static str =
        "CCRA: text-guided layer-patch, Gaussian-smoothed layer and patch attentions over many vision layers, fused with the last one by an MLP";

    fn needs(&self, cfg: &CcraConfig, vision: &VisionInfo) -> Result<ConnectorNeeds, ConfigError> {
        cfg.validate()?;
        if let Some(index) = cfg.residual_layer {
            vision.layer("residual_layer", index)?;
        }
        // PWCA's patch map is text→patch attention a grounding loss can train;
        // raw scores (`map_norm = "none"`) can be negative, so not then.
        let grounding = cfg.pwca && cfg.map_norm == MapNorm::Softmax;
        Ok(ConnectorNeeds {
            reads_text: true,
            equal_layer_shapes: true,
            grounding_map: grounding.then(|| "patch".to_string()),
            // Every block: hs[1..=L].
            ..ConnectorNeeds::prefix((1..=vision.depth as i64).collect())
        })
    }

    fn check(&self, cfg: &CcraConfig, env: &ConnectorEnv) -> Result<(), ConfigError> {
        Self::residual_position(cfg, env)?;
        Ok(())
    }

    fn build(
        &self,
        cfg: &CcraConfig,
        env: &ConnectorEnv,
        vb: VarBuilder,
    ) -> Result<Box<dyn Connector>, BuildError> {
        let residual = Self::residual_position(cfg, env)?;
        let dims = CcraDims {
            layers: env.layers.len(),
            vision: env.width(env.layers[0]),
            text: env.text_hidden,
            llm: env.llm_hidden,
        };
        Ok(Box::new(CcraConnector::new(cfg, dims, residual, vb)?))
    }

    fn param_groups(&self) -> Vec<ParamGroup> {
        vec![
            ParamGroup {
                name: "attention",
                prefixes: vec!["token_attn.", "lpwca.", "lwca.", "pwca."],
            },
            ParamGroup {
                name: "projector",
                prefixes: vec!["proj."],
            },
        ]
    }
}

vlmkit_plugin::export_connector!(CcraFactory);

#[cfg(test)]
mod tests;
