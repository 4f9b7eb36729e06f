//! Parameter counts of a plan per component (vision, connector and its groups,
//! language model), trainable, frozen or unused in one stage: what `vlmkit params`
//! prints and what a comparison study reports as "parameters added".

use std::collections::BTreeMap;

use serde::Serialize;

use crate::plan::Plan;
use crate::PipelineError;

/// Parameters of one component.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CountRow {
    pub trainable: usize,
    pub frozen: usize,
    /// Parameters no gradient can reach (frozen by the trainer whatever the stage).
    pub unused: usize,
}

impl CountRow {
    pub fn total(&self) -> usize {
        self.trainable + self.frozen + self.unused
    }
}

/// The counts of every component in one stage, in display order: `vision`,
/// `connector`, its named groups (`connector/<group>`), `llm`, `total`.
#[derive(Debug, Clone)]
pub struct ParamCounts {
    pub stage: String,
    pub trainable_patterns: Vec<String>,
    pub rows: Vec<(String, CountRow)>,
}

impl ParamCounts {
    /// Counts `plan`'s parameters from shapes (nothing is allocated) as stage
    /// `stage` trains them.
    pub fn of(plan: &Plan, stage: usize) -> Result<Self, PipelineError> {
        let Some(config) = plan.recipe.stages.get(stage) else {
            return Err(PipelineError::NoStage {
                stages: plan.recipe.stages.len(),
                stage,
            });
        };
        let shapes = plan.model.param_shapes()?;
        let trainable = plan.stages.trainable(config, &shapes.unused);
        let groups = plan.model.connector.param_groups();
        let mut rows: BTreeMap<String, CountRow> = BTreeMap::new();
        for (name, shape) in &shapes.shapes {
            let n: usize = shape.iter().product();
            let top = name.split('.').next().unwrap_or("").to_string();
            let mut keys = vec![top.clone()];
            if let Some(rel) = name.strip_prefix("connector.") {
                if let Some(g) = groups
                    .iter()
                    .find(|g| g.prefixes.iter().any(|p| rel.starts_with(p)))
                {
                    keys.push(format!("connector/{}", g.name));
                }
            }
            keys.push("total".into());
            for key in keys {
                let row = rows.entry(key).or_default();
                if shapes.unused.iter().any(|u| name.starts_with(u.as_str())) {
                    row.unused += n;
                } else if trainable(name) {
                    row.trainable += n;
                } else {
                    row.frozen += n;
                }
            }
        }
        let order = |k: &str| match k {
            "vision" => 0,
            "connector" => 1,
            _ if k.starts_with("connector/") => 2,
            "llm" => 3,
            "total" => 9,
            _ => 5,
        };
        let mut rows: Vec<(String, CountRow)> = rows.into_iter().collect();
        rows.sort_by_key(|(k, _)| (order(k), k.clone()));
        Ok(Self {
            stage: config.name.clone(),
            trainable_patterns: config.trainable.clone(),
            rows,
        })
    }

    /// The row of a component (`"connector"`, `"connector/attention"`, …).
    pub fn get(&self, component: &str) -> Option<&CountRow> {
        self.rows
            .iter()
            .find(|(k, _)| k == component)
            .map(|(_, r)| r)
    }

    /// The table `vlmkit params` prints.
    pub fn table(&self) -> String {
        let mut out = format!(
            "stage `{}` (trainable: {:?})\n{:<24} {:>15} {:>15} {:>15} {:>15}\n",
            self.stage,
            self.trainable_patterns,
            "component",
            "trainable",
            "frozen",
            "unused",
            "total"
        );
        for (key, r) in &self.rows {
            let label = key
                .strip_prefix("connector/")
                .map_or(key.clone(), |g| format!("  {g}"));
            out += &format!(
                "{label:<24} {:>15} {:>15} {:>15} {:>15}\n",
                thousands(r.trainable),
                thousands(r.frozen),
                thousands(r.unused),
                thousands(r.total())
            );
        }
        out
    }
}

/// `20979712` → `20,979,712`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(20_979_712), "20,979,712");
    }
}
