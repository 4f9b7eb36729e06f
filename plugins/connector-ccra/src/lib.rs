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
    fn config(settings: &Settings) -> Result<CcraConfig, SettingsError> {
        let cfg: CcraConfig = settings.parse()?;
        cfg.validate()
            .map_err(|(key, message)| settings.error(key, message))?;
        Ok(cfg)
    }

    /// Position in the selected layers of the layer fused with the regional
    /// features: `residual_layer`, or the last selected one.
    fn residual_position(
        cfg: &CcraConfig,
        settings: &Settings,
        env: &ConnectorEnv,
    ) -> Result<usize, SettingsError> {
        match cfg.residual_layer {
            None => Ok(env.layers.len() - 1),
            Some(index) => {
                let abs = env.selected(index, "residual_layer", settings)?;
                Ok(env.layers.iter().position(|&l| l == abs).expect("selected"))
            }
        }
    }
}

impl ConnectorFactory for CcraFactory {
    fn kind(&self) -> &'static str {
        "ccra"
    }

    fn summary(&self) -> &'static str {
        "CCRA: text-guided layer-patch, Gaussian-smoothed layer and patch attentions over many vision layers, fused with the last one by an MLP"
    }

    fn defaults(&self) -> vlmkit_plugin::toml::Table {
        vlmkit_plugin::settings_table(&CcraConfig::default())
    }

    fn needs(
        &self,
        settings: &Settings,
        vision: &VisionInfo,
    ) -> Result<ConnectorNeeds, SettingsError> {
        let cfg = Self::config(settings)?;
        if let Some(index) = cfg.residual_layer {
            vision
                .resolve(index)
                .map_err(|e| settings.error("residual_layer", e.to_string()))?;
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

    fn check(&self, settings: &Settings, env: &ConnectorEnv) -> Result<(), SettingsError> {
        let cfg = Self::config(settings)?;
        Self::residual_position(&cfg, settings, env)?;
        Ok(())
    }

    fn build(
        &self,
        settings: &Settings,
        env: &ConnectorEnv,
        vb: VarBuilder,
    ) -> Result<Box<dyn Connector>, BuildError> {
        let cfg = Self::config(settings)?;
        let residual = Self::residual_position(&cfg, settings, env)?;
        let dims = CcraDims {
            layers: env.layers.len(),
            vision: env.width(env.layers[0]),
            text: env.text_hidden,
            llm: env.llm_hidden,
        };
        Ok(Box::new(CcraConnector::new(&cfg, dims, residual, vb)?))
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
