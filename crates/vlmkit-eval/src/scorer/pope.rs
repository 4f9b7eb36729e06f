//! POPE's metrics for yes/no existence questions ("yes" is the positive class):
//! accuracy, precision, recall, F1 and the yes-ratio per negative sampler
//! (`random`, `popular`, `adversarial`) and over all of them.

use serde::{Deserialize, Serialize};

use super::Scorer;
use crate::{normalize_answer, Prediction};

/// The tag naming a question's POPE sampler.
const TAG: &str = "pope";

/// POPE metrics for one negative sampler or all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PopeScore {
    pub subset: String,
    pub n: usize,
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub yes_ratio: f64,
}

/// The POPE scorer's results: a report's `pope` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PopeScores {
    pub pope: Vec<PopeScore>,
}

/// POPE's metrics over the predictions tagged with a sampler.
pub struct PopeScorer;

impl Scorer for PopeScorer {
    type Output = PopeScores;
    const NAME: &'static str = "pope";

    fn tags(&self) -> &'static [&'static str] {
        &[TAG]
    }

    fn score(&self, predictions: &[Prediction]) -> Option<PopeScores> {
        let existence: Vec<&Prediction> = predictions
            .iter()
            .filter(|p| p.tag(TAG).is_some())
            .collect();
        if existence.is_empty() {
            return None;
        }
        let mut subsets: Vec<&str> = existence.iter().filter_map(|p| p.tag(TAG)).collect();
        subsets.sort();
        subsets.dedup();
        let mut pope = Vec::new();
        for s in subsets {
            let preds: Vec<&Prediction> = existence
                .iter()
                .copied()
                .filter(|p| p.tag(TAG) == Some(s))
                .collect();
            pope.push(pope_scores(&preds, s));
        }
        pope.push(pope_scores(&existence, "all"));
        Some(PopeScores { pope })
    }

    fn table(&self, output: &PopeScores) -> String {
        if output.pope.is_empty() {
            return String::new();
        }
        let mut out = format!(
            "\nPOPE (existence)  {:>6} {:>9} {:>10} {:>7} {:>7} {:>10}\n",
            "n", "accuracy", "precision", "recall", "F1", "yes-ratio"
        );
        for p in &output.pope {
            out += &format!(
                "{:<17} {:>6} {:>8.1}% {:>9.1}% {:>6.1}% {:>6.1}% {:>9.1}%\n",
                p.subset,
                p.n,
                100.0 * p.accuracy,
                100.0 * p.precision,
                100.0 * p.recall,
                100.0 * p.f1,
                100.0 * p.yes_ratio
            );
        }
        out
    }
}

fn pope_scores(predictions: &[&Prediction], subset: &str) -> PopeScore {
    let yes = |s: &str| normalize_answer(s).split(' ').next() == Some("yes");
    let (mut tp, mut fp, mut tn, mut fneg) = (0usize, 0usize, 0usize, 0usize);
    for p in predictions {
        match (
            yes(&p.answer),
            yes(p.read.as_deref().unwrap_or(&p.prediction)),
        ) {
            (true, true) => tp += 1,
            (false, true) => fp += 1,
            (false, false) => tn += 1,
            (true, false) => fneg += 1,
        }
    }
    let n = predictions.len();
    let div = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let precision = div(tp, tp + fp);
    let recall = div(tp, tp + fneg);
    PopeScore {
        subset: subset.to_string(),
        n,
        accuracy: div(tp + tn, n),
        precision,
        recall,
        f1: if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        },
        yes_ratio: div(tp + fp, n),
    }
}
