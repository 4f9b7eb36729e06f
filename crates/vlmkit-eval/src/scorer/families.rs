//! Accuracy per question family — and per question form where a family offers
//! several option sets — beside the chance (uniform over the family's answers, or
//! a question's options) and majority (most frequent answer) baselines.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Scorer;
use crate::{normalize_answer, Prediction};

/// Accuracy of one question family, or of one form of it, and its baselines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyScore {
    pub family: String,
    /// The question form within the family, named by its options
    /// (`above/below`); `None` for the whole family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<String>,
    pub n: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// Expected accuracy of guessing uniformly: among each question's options when it
    /// offers some, else among the family's answers.
    pub chance: f64,
    /// Accuracy of always giving the most frequent answer.
    pub majority: f64,
    pub majority_answer: String,
}

impl FamilyScore {
    /// The stronger of the two baselines.
    pub fn baseline(&self) -> f64 {
        self.chance.max(self.majority)
    }

    /// `relation`, or `relation: above/below` for a form.
    pub fn key(&self) -> String {
        match &self.form {
            Some(form) => format!("{}: {form}", self.family),
            None => self.family.clone(),
        }
    }

    /// Whether this is the score [`key`](Self::key) names (without building it).
    pub fn has_key(&self, key: &str) -> bool {
        match &self.form {
            None => self.family == key,
            Some(form) => {
                key.strip_prefix(self.family.as_str())
                    .and_then(|rest| rest.strip_prefix(": "))
                    == Some(form.as_str())
            }
        }
    }
}

/// The families scorer's results: a report's `families` and `forms` sections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FamilyScores {
    pub families: Vec<FamilyScore>,
    /// Families whose questions offer different option sets, scored per set:
    /// `relation` as `above/below` and `left/right`, which a model can learn one
    /// without the other.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forms: Vec<FamilyScore>,
}

impl FamilyScores {
    /// Every family's score, then every form's.
    pub fn scores(&self) -> impl Iterator<Item = &FamilyScore> {
        self.families.iter().chain(&self.forms)
    }

    /// The family's (`color`) or form's (`relation: above/below`) score.
    pub fn score_of(&self, key: &str) -> Option<&FamilyScore> {
        self.scores().find(|f| f.has_key(key))
    }

    /// Questions scored, over every family.
    pub fn samples(&self) -> usize {
        self.families.iter().map(|f| f.n).sum()
    }

    /// Accuracy over every question.
    pub fn accuracy(&self) -> f64 {
        let correct: usize = self.families.iter().map(|f| f.correct).sum();
        match self.samples() {
            0 => 0.0,
            n => correct as f64 / n as f64,
        }
    }

    /// A plain-text table: a row per family, its forms indented under it, and
    /// every question.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<14} {:>6} {:>9} {:>8} {:>9} {:>10}\n",
            "family", "n", "accuracy", "chance", "majority", "vs best"
        );
        let row = |label: &str, f: &FamilyScore| {
            format!(
                "{label:<14} {:>6} {:>8.1}% {:>7.1}% {:>8.1}% {:>+9.1}\n",
                f.n,
                100.0 * f.accuracy,
                100.0 * f.chance,
                100.0 * f.majority,
                100.0 * (f.accuracy - f.baseline())
            )
        };
        for f in &self.families {
            out += &row(&f.family, f);
            for form in self.forms.iter().filter(|g| g.family == f.family) {
                out += &row(&format!("  {}", form.form.as_deref().unwrap_or("")), form);
            }
        }
        out += &format!(
            "{:<14} {:>6} {:>8.1}%\n",
            "all",
            self.samples(),
            100.0 * self.accuracy()
        );
        out
    }

    /// Per-family accuracy as a bar chart with each family's best baseline marked.
    pub fn save_chart(
        &self,
        title: &str,
        path: &std::path::Path,
    ) -> Result<(), vlmkit_plot::PlotError> {
        let groups: Vec<String> = self.families.iter().map(|f| f.family.clone()).collect();
        let values: Vec<f64> = self.families.iter().map(|f| 100.0 * f.accuracy).collect();
        let baselines: Vec<Option<f64>> = self
            .families
            .iter()
            .map(|f| Some(100.0 * f.baseline()))
            .collect();
        vlmkit_plot::BarChart::new(title)
            .groups(groups)
            .series("accuracy %", values)
            .baselines(baselines)
            .y_range(0.0, 100.0)
            .y_label("accuracy (%)")
            .save_png(path, 900, 480)
    }
}

/// Accuracy per question family and form, with baselines.
pub struct FamilyScorer;

/// The tag that carries how many answers an open question's family has (the
/// built-in data sets it): chance is one over it, whatever a sample of the
/// family happens to answer.
pub const ANSWER_COUNT_TAG: &str = "answer_count";

impl Scorer for FamilyScorer {
    type Output = FamilyScores;
    const NAME: &'static str = "families";

    fn tags(&self) -> &'static [&'static str] {
        &[ANSWER_COUNT_TAG]
    }

    fn score(&self, predictions: &[Prediction]) -> Option<FamilyScores> {
        let mut by_family: BTreeMap<&str, Vec<&Prediction>> = BTreeMap::new();
        for p in predictions {
            by_family.entry(p.family.as_str()).or_default().push(p);
        }
        let families = by_family
            .iter()
            .map(|(family, preds)| family_score(family, None, preds))
            .collect();
        let mut forms = Vec::new();
        for (family, preds) in &by_family {
            let mut by_form: BTreeMap<String, Vec<&Prediction>> = BTreeMap::new();
            for p in preds.iter().filter(|p| !p.options.is_empty()) {
                by_form.entry(p.options.join("/")).or_default().push(p);
            }
            if by_form.len() > 1 {
                forms.extend(
                    by_form
                        .iter()
                        .map(|(form, preds)| family_score(family, Some(form), preds)),
                );
            }
        }
        Some(FamilyScores { families, forms })
    }

    fn table(&self, output: &FamilyScores) -> String {
        output.table()
    }
}

/// Accuracy and baselines of `preds`, one family's questions or one form's.
fn family_score(family: &str, form: Option<&str>, preds: &[&Prediction]) -> FamilyScore {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for p in preds {
        *counts.entry(normalize_answer(&p.answer)).or_default() += 1;
    }
    let (majority_answer, majority_count) = counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(a, c)| (a.clone(), *c))
        .unwrap_or_default();
    let n = preds.len();
    let correct = preds.iter().filter(|p| p.correct).count();
    FamilyScore {
        family: family.to_string(),
        form: form.map(str::to_string),
        n,
        correct,
        accuracy: correct as f64 / n as f64,
        // A choice: one over its options. An open question: one over its
        // family's answers when the data says how many, else (data that does
        // not) over the answers these questions have.
        chance: preds
            .iter()
            .map(|p| {
                let answers = p
                    .tag(ANSWER_COUNT_TAG)
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|&n| n > 0);
                match (p.options.len(), answers) {
                    (0, Some(n)) => 1.0 / n as f64,
                    (0, None) => 1.0 / counts.len().max(1) as f64,
                    (k, _) => 1.0 / k as f64,
                }
            })
            .sum::<f64>()
            / n as f64,
        majority: majority_count as f64 / n as f64,
        majority_answer,
    }
}
