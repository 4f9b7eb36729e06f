//! Everything a recipe's `kind`s and loss names are looked up in, one registry
//! per thing users extend. Adding a connector, a vision encoder or a loss is a
//! registration here, never an edit of the planning code.

use vlmkit_core::LossRegistry;
use vlmkit_models::VisionRegistry;
use vlmkit_plugin::Registry;
use vlmkit_recipe::{Recipe, RecipeError};

/// The connectors (and the plugins that bring them), vision encoders and host
/// losses a process knows.
#[derive(Debug, Clone)]
pub struct Components {
    /// `[connector] kind`: the built-in connectors and loaded plugins.
    pub connectors: Registry,
    /// `[vision] kind`.
    pub vision: VisionRegistry,
    /// The names a stage's `losses` table can weigh besides a connector's own.
    pub losses: LossRegistry,
}

impl Components {
    /// `connectors`, with vlmkit's vision encoders and host losses.
    pub fn new(connectors: Registry) -> Self {
        Self {
            connectors,
            vision: VisionRegistry::builtin(),
            losses: LossRegistry::builtin(),
        }
    }

    /// These components plus the plugins `recipe` names (`[plugins] paths`,
    /// pinned by `sha256` when the recipe says so); an error names the recipe key.
    pub fn with_recipe_plugins(&self, recipe: &Recipe) -> Result<Self, RecipeError> {
        let connectors = self
            .connectors
            .with_plugins(&recipe.plugins.paths, &recipe.plugins.sha256)
            .map_err(|(key, err)| recipe.error_at(&key, err.to_string()))?;
        Ok(Self {
            connectors,
            ..self.clone()
        })
    }
}
