//! Scorers: what turns answered questions into a report's numbers, behind one
//! small trait, so that a new benchmark is a new file and a registration.
//!
//! A [`Scorer`] reads the predictions it applies to and returns its results in
//! its own typed shape; a report keeps each scorer's results under the names it
//! gives them ([`crate::EvalReport::sections`]), so reports and the files that
//! hold them carry any scorer's numbers without a schema change. The built-in
//! scorers are [`FamilyScorer`] (accuracy per question family and form beside
//! chance and majority baselines) and [`PopeScorer`] (POPE's metrics per
//! negative sampler).

mod families;
mod pope;

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

pub use families::{FamilyScore, FamilyScorer, FamilyScores, ANSWER_COUNT_TAG};
pub use pope::{PopeScore, PopeScorer, PopeScores};

use crate::Prediction;

/// Scores answered questions.
pub trait Scorer: Send + Sync + 'static {
    /// Its results. They serialise as a JSON object whose keys become sections
    /// of the report (the families scorer's `families` and `forms`, POPE's
    /// `pope`), so choose keys no other scorer uses.
    type Output: Serialize + DeserializeOwned;

    /// Its name, for messages.
    const NAME: &'static str;

    /// The example metadata it reads (copied into each prediction's tags).
    fn tags(&self) -> &'static [&'static str] {
        &[]
    }

    /// Its results on `predictions`, `None` when none of them is its to score.
    fn score(&self, predictions: &[Prediction]) -> Option<Self::Output>;

    /// The results as a plain-text table.
    fn table(&self, output: &Self::Output) -> String;
}

/// A [`Scorer`] with its output type erased: what a [`ScorerRegistry`] holds.
pub trait DynScorer: Send + Sync {
    fn name(&self) -> &'static str;
    fn tags(&self) -> &'static [&'static str];
    /// The report sections of its results on `predictions`.
    fn score(&self, predictions: &[Prediction]) -> Option<Map<String, Value>>;
    /// The table of its results among a report's `sections`, when they hold them.
    fn table(&self, sections: &Map<String, Value>) -> Option<String>;
}

impl<S: Scorer> DynScorer for S {
    fn name(&self) -> &'static str {
        S::NAME
    }

    fn tags(&self) -> &'static [&'static str] {
        Scorer::tags(self)
    }

    fn score(&self, predictions: &[Prediction]) -> Option<Map<String, Value>> {
        let output = Scorer::score(self, predictions)?;
        match serde_json::to_value(output).expect("scorer results serialise") {
            Value::Object(sections) => Some(sections),
            other => panic!(
                "scorer `{}` must return results that serialise as an object, not {other}",
                S::NAME
            ),
        }
    }

    fn table(&self, sections: &Map<String, Value>) -> Option<String> {
        read_sections::<S>(sections).map(|output| Scorer::table(self, &output))
    }
}

/// Scorer `S`'s results among a report's `sections`, when they hold them.
pub(crate) fn read_sections<S: Scorer>(sections: &Map<String, Value>) -> Option<S::Output> {
    serde_json::from_value(Value::Object(sections.clone())).ok()
}

/// The scorers a process knows, in the order their tables print.
#[derive(Clone)]
pub struct ScorerRegistry {
    scorers: Vec<Arc<dyn DynScorer>>,
}

impl std::fmt::Debug for ScorerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.scorers.iter().map(|s| s.name()))
            .finish()
    }
}

impl Default for ScorerRegistry {
    /// The families scorer and POPE.
    fn default() -> Self {
        Self {
            scorers: vec![Arc::new(FamilyScorer), Arc::new(PopeScorer)],
        }
    }
}

/// A scorer that cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScorerError {
    #[error("scorer `{0}` is registered twice")]
    Duplicate(&'static str),
    /// Tags are written beside a prediction's own fields.
    #[error("scorer `{scorer}` reads tag `{tag}`, which is a prediction field's name")]
    ReservedTag {
        scorer: &'static str,
        tag: &'static str,
    },
}

impl ScorerRegistry {
    /// Adds a scorer after the others.
    pub fn register<S: Scorer>(&mut self, scorer: S) -> Result<(), ScorerError> {
        if self.scorers.iter().any(|s| s.name() == S::NAME) {
            return Err(ScorerError::Duplicate(S::NAME));
        }
        if let Some(tag) = Scorer::tags(&scorer)
            .iter()
            .find(|tag| Prediction::FIELDS.contains(tag))
        {
            return Err(ScorerError::ReservedTag {
                scorer: S::NAME,
                tag,
            });
        }
        self.scorers.push(Arc::new(scorer));
        Ok(())
    }

    pub fn iter(&self) -> impl Iterator<Item = &dyn DynScorer> {
        self.scorers.iter().map(|s| s.as_ref())
    }

    /// Every tag some scorer reads.
    pub fn tags(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.scorers.iter().flat_map(|s| s.tags().iter().copied())
    }
}
