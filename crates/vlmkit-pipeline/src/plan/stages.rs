//! The stages part of a plan: what each stage trains (its `trainable` patterns),
//! at which rates (`part_lr`), on which loss terms and weights (`losses`), and
//! which pretrained parts stay exactly their source's (the checkpoint freezing
//! policy).

use std::collections::BTreeMap;
use std::sync::Arc;

use vlmkit_recipe::{Recipe, RecipeError, StageConfig};

use super::model::ModelPlan;

/// `trainable` and `part_lr` patterns: dotted components, `*` matching any one
/// component, a pattern matching a prefix of the name. `vision.blocks.N` and
/// `llm.blocks.N` name the encoder's and the decoder's N-th block, wherever the
/// architecture keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamPatterns {
    /// (shorthand, what it stands for), e.g. `("vision.blocks",
    /// "vision.vision_model.encoder.layers")`.
    aliases: Vec<(String, String)>,
}

impl Default for ParamPatterns {
    /// A CLIP-layout encoder and a LLaMA-family decoder.
    fn default() -> Self {
        Self::new("vision_model.encoder.layers", "model.layers")
    }
}

impl ParamPatterns {
    /// Patterns for an encoder whose blocks live under `vision_blocks` and a
    /// decoder whose blocks live under `llm_blocks` (names under each part).
    pub fn new(vision_blocks: &str, llm_blocks: &str) -> Self {
        Self {
            aliases: vec![
                ("vision.blocks".into(), format!("vision.{vision_blocks}")),
                ("llm.blocks".into(), format!("llm.{llm_blocks}")),
            ],
        }
    }

    /// The pattern with its shorthand spelt out.
    pub fn expand(&self, pattern: &str) -> String {
        for (alias, full) in &self.aliases {
            if let Some(rest) = pattern.strip_prefix(alias.as_str()) {
                if rest.is_empty() || rest.starts_with('.') {
                    return format!("{full}{rest}");
                }
            }
        }
        pattern.to_string()
    }

    /// Whether parameter `name` is selected by `pattern`.
    pub fn matches(&self, pattern: &str, name: &str) -> bool {
        let expanded = self.expand(pattern);
        let pat: Vec<&str> = expanded.split('.').collect();
        let parts: Vec<&str> = name.split('.').collect();
        pat.len() <= parts.len() && pat.iter().zip(&parts).all(|(p, n)| *p == "*" || p == n)
    }

    /// How specific a pattern is: its components, spelt out.
    fn components(&self, pattern: &str) -> usize {
        self.expand(pattern).split('.').count()
    }
}

/// How the stages train, validated.
#[derive(Debug, Clone)]
pub struct StagePlan {
    pub patterns: ParamPatterns,
    /// The connector's own loss terms (weight 1 unless a stage says otherwise).
    pub aux_losses: Vec<String>,
}

impl StagePlan {
    /// Checks every stage's `losses` against the host losses and the connector,
    /// and its `trainable` and `part_lr` patterns against the model's parameters.
    pub(super) fn new(recipe: &Recipe, model: &ModelPlan) -> Result<Self, RecipeError> {
        let plan = Self {
            patterns: ParamPatterns::new(
                model.vision.config.blocks_prefix(),
                model.llm.blocks_prefix(),
            ),
            aux_losses: model.needs.aux_losses.clone(),
        };
        plan.check_losses(recipe, model)?;
        plan.check_patterns(recipe, model)?;
        Ok(plan)
    }

    /// A stage's loss names: each a host loss that can train this connector, or
    /// one of the connector's own terms.
    fn check_losses(&self, recipe: &Recipe, model: &ModelPlan) -> Result<(), RecipeError> {
        let kind = model.connector.kind();
        for (i, stage) in recipe.stages.iter().enumerate() {
            for name in stage.losses.keys() {
                let key = format!("stage.{i}.losses.{name}");
                let host = model.losses.get(name);
                if let Some(loss) = host {
                    loss.check(kind, &model.needs)
                        .map_err(|why| recipe.error_at(&key, why))?;
                }
                let own = self.aux_losses.contains(name);
                if host.is_some() && own {
                    return Err(recipe.error_at(
                        &key,
                        format!("connector `{kind}` reports a loss term of its own named `{name}`, which is also a host loss; one name cannot weigh both"),
                    ));
                }
                if host.is_none() && !own {
                    let mut all: Vec<String> = model.losses.names().map(str::to_string).collect();
                    all.extend(self.aux_losses.iter().cloned());
                    return Err(recipe.error_at(
                        &key,
                        format!(
                            "unknown loss `{name}` for connector `{kind}` (available: {})",
                            all.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every stage's `trainable` patterns must select at least one parameter,
    /// and its `part_lr` patterns at least one parameter the stage trains.
    /// Checked on shapes alone (nothing is allocated).
    fn check_patterns(&self, recipe: &Recipe, model: &ModelPlan) -> Result<(), RecipeError> {
        let shapes = model
            .param_shapes()
            .map_err(|e| recipe.error_at("vision", e.to_string()))?;
        let names: Vec<&String> = shapes.shapes.keys().collect();
        for (i, stage) in recipe.stages.iter().enumerate() {
            for pattern in &stage.trainable {
                if !names.iter().any(|n| self.patterns.matches(pattern, n)) {
                    return Err(recipe.error_at(
                        &format!("stage.{i}.trainable"),
                        format!(
                            "pattern `{pattern}` matches no parameter (top-level components: vision, connector, llm)"
                        ),
                    ));
                }
            }
            let trained = |name: &str| {
                stage
                    .trainable
                    .iter()
                    .any(|t| self.patterns.matches(t, name))
            };
            for pattern in stage.part_lr.keys() {
                if !names
                    .iter()
                    .any(|n| self.patterns.matches(pattern, n) && trained(n))
                {
                    return Err(recipe.error_at(
                        &format!("stage.{i}.part_lr"),
                        format!(
                            "pattern `{pattern}` matches no parameter that stage `{}` trains (trainable: {})",
                            stage.name,
                            stage.trainable.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The loss weights of a stage: its `losses` table, and weight 1 for each of the
    /// connector's own terms the table does not mention.
    pub fn loss_weights(&self, stage: &StageConfig) -> BTreeMap<String, f64> {
        let mut weights = stage.losses.clone();
        for aux in &self.aux_losses {
            weights.entry(aux.clone()).or_insert(1.0);
        }
        weights
    }

    /// Trainable-parameter predicate of a stage: its patterns, minus parameters that
    /// cannot receive a gradient with this layer selection (`unused` prefixes).
    pub fn trainable(
        &self,
        stage: &StageConfig,
        unused: &[String],
    ) -> Arc<dyn Fn(&str) -> bool + Send + Sync> {
        let patterns = self.patterns.clone();
        let trainable = stage.trainable.clone();
        let unused = unused.to_vec();
        Arc::new(move |name: &str| {
            trainable.iter().any(|p| patterns.matches(p, name))
                && !unused.iter().any(|u| name.starts_with(u.as_str()))
        })
    }

    /// The peak learning rate of parameter `name` in `stage`: that of the most
    /// specific `part_lr` pattern matching it (the one with the most components),
    /// else the stage's `lr`.
    pub fn part_lr(&self, stage: &StageConfig, name: &str) -> f64 {
        stage
            .part_lr
            .iter()
            .filter(|(pattern, _)| self.patterns.matches(pattern, name))
            .max_by_key(|(pattern, _)| self.patterns.components(pattern))
            .map_or(stage.lr, |(_, lr)| *lr)
    }

    /// Whether any of `stages` up to `upto` (the stage in progress) trains part
    /// `part` (`vision`, `llm`): a pattern that starts with it, or with `*`.
    pub fn trains_part(&self, stages: &[StageConfig], upto: usize, part: &str) -> bool {
        stages.iter().take(upto + 1).any(|s| {
            s.trainable.iter().any(|pattern| {
                let first = pattern.split('.').next().unwrap_or_default();
                first == part || first == "*"
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern_matches(pattern: &str, name: &str) -> bool {
        ParamPatterns::default().matches(pattern, name)
    }

    fn part_lr(stage: &StageConfig, name: &str) -> f64 {
        let plan = StagePlan {
            patterns: ParamPatterns::default(),
            aux_losses: Vec::new(),
        };
        plan.part_lr(stage, name)
    }

    #[test]
    fn part_learning_rates_follow_the_most_specific_pattern() {
        let stage: StageConfig = toml::from_str(
            "name = \"s\"\ntrainable = [\"connector\", \"llm\"]\nsteps = 1\nlr = 1e-3\nbatch_size = 2\n\
             part_lr = { llm = 2e-5, \"llm.blocks.1\" = 1e-4 }\n",
        )
        .unwrap();
        assert_eq!(part_lr(&stage, "connector.proj.0.weight"), 1e-3);
        assert_eq!(part_lr(&stage, "llm.model.embed_tokens.weight"), 2e-5);
        assert_eq!(
            part_lr(&stage, "llm.model.layers.1.mlp.up_proj.weight"),
            1e-4
        );
        assert_eq!(
            part_lr(&stage, "llm.model.layers.10.mlp.up_proj.weight"),
            2e-5
        );
    }

    #[test]
    fn patterns_match_prefixes_wildcards_and_aliases() {
        let n = "vision.vision_model.encoder.layers.3.mlp.fc1.weight";
        assert!(pattern_matches("vision", n));
        assert!(pattern_matches("vision.blocks.3", n));
        assert!(!pattern_matches("vision.blocks.30", n));
        assert!(!pattern_matches("vision.blocks.2", n));
        assert!(pattern_matches("vision.*.encoder.layers.3.mlp", n));
        assert!(!pattern_matches("visio", n));
        assert!(pattern_matches(
            "llm.blocks.0",
            "llm.model.layers.0.self_attn.q_proj.weight"
        ));
        assert!(pattern_matches("connector", "connector.proj.0.weight"));
    }

    #[test]
    fn block_shorthands_follow_the_architecture() {
        let convnext = ParamPatterns::new("encoder.stages", "model.layers");
        assert!(convnext.matches(
            "vision.blocks.1",
            "vision.encoder.stages.1.layers.0.pwconv1.weight"
        ));
        assert!(!convnext.matches(
            "vision.blocks.1",
            "vision.vision_model.encoder.layers.1.mlp.fc1.weight"
        ));
        // A shorthand is a whole component: `vision.blocksX` is not one.
        assert_eq!(convnext.expand("vision.blocksX"), "vision.blocksX");
    }
}
