//! Scoring predictions: exact match after normalisation, per family, beside the
//! chance (uniform over the family's answers) and majority (most frequent answer)
//! baselines; POPE's accuracy / precision / recall / F1 / yes-ratio per sampler.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One answered question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub id: String,
    pub family: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pope: Option<String>,
    pub question: String,
    /// For multiple-choice questions, the answers offered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    pub answer: String,
    pub prediction: String,
    /// The answer read from a reply in sentences ([`AnswerMatch::Relaxed`]):
    /// `yes`/`no`, or the one option it names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<String>,
    pub correct: bool,
}

/// How a generated reply is matched with the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnswerMatch {
    /// The whole reply, normalised, equals the answer: the recipes' models
    /// answer in a word or phrase.
    #[default]
    Exact,
    /// For replies in sentences (a pretrained chat model's): yes/no by POPE's
    /// rule (a "no" or "not" anywhere means no), a choice by the one option the
    /// reply names, an open answer when it occurs in the reply as whole words.
    Relaxed,
}

impl AnswerMatch {
    /// Whether `reply` gives `answer` to a question offering `options` (empty for
    /// open questions), and the answer read from the reply where there is one.
    pub fn judge(self, answer: &str, reply: &str, options: &[String]) -> (bool, Option<String>) {
        let answer = normalize_answer(answer);
        let reply = normalize_answer(reply);
        if self == AnswerMatch::Exact {
            return (answer == reply, None);
        }
        let words: Vec<&str> = reply.split(' ').collect();
        let names = |phrase: &str| {
            let phrase: Vec<&str> = phrase.split(' ').collect();
            words.windows(phrase.len()).any(|w| w == phrase.as_slice())
        };
        if answer == "yes" || answer == "no" {
            let read = if words.iter().any(|w| *w == "no" || *w == "not") {
                "no"
            } else {
                "yes"
            };
            return (read == answer, Some(read.to_string()));
        }
        if options.is_empty() {
            return (names(&answer), None);
        }
        let named: Vec<String> = options
            .iter()
            .map(|o| normalize_answer(o))
            .filter(|o| names(o))
            .collect();
        match named.as_slice() {
            [one] => (*one == answer, Some(one.clone())),
            _ => (false, None),
        }
    }
}

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

/// POPE metrics ("yes" is the positive class) for one negative sampler or all.
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub checkpoint: String,
    pub samples: usize,
    pub accuracy: f64,
    pub families: Vec<FamilyScore>,
    /// Families whose questions offer different option sets, scored per set:
    /// `relation` as `above/below` and `left/right`, which a model can learn one
    /// without the other.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forms: Vec<FamilyScore>,
    pub pope: Vec<PopeScore>,
}

impl EvalReport {
    /// Every family's score, then every form's.
    pub fn scores(&self) -> impl Iterator<Item = &FamilyScore> {
        self.families.iter().chain(&self.forms)
    }

    /// The family's (`color`) or form's (`relation: above/below`) score.
    pub fn score_of(&self, key: &str) -> Option<&FamilyScore> {
        self.scores().find(|f| f.has_key(key))
    }
}

/// Lowercase, punctuation and surrounding spaces removed, inner spaces collapsed.
pub fn normalize_answer(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() {
                c
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
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

/// Scores `predictions` (already marked correct or not).
pub fn score(checkpoint: &str, predictions: &[Prediction]) -> EvalReport {
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
    let existence: Vec<&Prediction> = predictions.iter().filter(|p| p.pope.is_some()).collect();
    let mut pope = Vec::new();
    if !existence.is_empty() {
        let mut subsets: Vec<&str> = existence.iter().filter_map(|p| p.pope.as_deref()).collect();
        subsets.sort();
        subsets.dedup();
        for s in subsets {
            let preds: Vec<&Prediction> = existence
                .iter()
                .copied()
                .filter(|p| p.pope.as_deref() == Some(s))
                .collect();
            pope.push(pope_scores(&preds, s));
        }
        pope.push(pope_scores(&existence, "all"));
    }
    let correct = predictions.iter().filter(|p| p.correct).count();
    EvalReport {
        checkpoint: checkpoint.to_string(),
        samples: predictions.len(),
        accuracy: if predictions.is_empty() {
            0.0
        } else {
            correct as f64 / predictions.len() as f64
        },
        families,
        forms,
        pope,
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
        chance: preds
            .iter()
            .map(|p| match p.options.len() {
                0 => 1.0 / counts.len().max(1) as f64,
                k => 1.0 / k as f64,
            })
            .sum::<f64>()
            / n as f64,
        majority: majority_count as f64 / n as f64,
        majority_answer,
    }
}

impl EvalReport {
    /// A plain-text table.
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
            self.samples,
            100.0 * self.accuracy
        );
        if !self.pope.is_empty() {
            out += &format!(
                "\nPOPE (existence)  {:>6} {:>9} {:>10} {:>7} {:>7} {:>10}\n",
                "n", "accuracy", "precision", "recall", "F1", "yes-ratio"
            );
            for p in &self.pope {
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
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn p(family: &str, pope: Option<&str>, answer: &str, prediction: &str) -> Prediction {
        Prediction {
            id: String::new(),
            family: family.into(),
            pope: pope.map(str::to_string),
            question: String::new(),
            options: Vec::new(),
            answer: answer.into(),
            prediction: prediction.into(),
            read: None,
            correct: normalize_answer(answer) == normalize_answer(prediction),
        }
    }

    /// `prediction` as a choice among `options`.
    fn offering(options: &[&str], prediction: Prediction) -> Prediction {
        Prediction {
            options: options.iter().map(|o| o.to_string()).collect(),
            ..prediction
        }
    }

    #[test]
    fn relaxed_matching_reads_sentence_replies() {
        let options = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let relaxed = |answer: &str, reply: &str, offered: &[&str]| {
            AnswerMatch::Relaxed.judge(answer, reply, &options(offered))
        };
        // Yes/no by POPE's rule.
        let no = "No, there is no red circle in the image.";
        assert_eq!(relaxed("no", no, &[]), (true, Some("no".into())));
        assert_eq!(relaxed("yes", no, &[]), (false, Some("no".into())));
        assert_eq!(
            relaxed("yes", "Yes, a red circle.", &[]),
            (true, Some("yes".into()))
        );
        assert_eq!(
            relaxed("no", "It is not there.", &[]),
            (true, Some("no".into()))
        );
        // A choice is read when the reply names exactly one option.
        let above = "The blue triangle is above the blue circle.";
        assert_eq!(
            relaxed("above", above, &["above", "below"]),
            (true, Some("above".into()))
        );
        assert_eq!(
            relaxed("below", above, &["above", "below"]),
            (false, Some("above".into()))
        );
        assert_eq!(
            relaxed("below", "Above or below?", &["above", "below"]),
            (false, None)
        );
        // Open answers: the answer's words, whole and in order.
        assert_eq!(relaxed("red", "The answer is \"red\"", &[]), (true, None));
        assert_eq!(relaxed("3", "The answer is: 13", &[]), (false, None));
        assert_eq!(
            relaxed("top left", "It is at the top left.", &[]),
            (true, None)
        );
        assert_eq!(relaxed("top left", "left, at the top", &[]), (false, None));
        // Exact matching wants the whole reply.
        assert_eq!(AnswerMatch::Exact.judge("red", "Red.", &[]), (true, None));
        assert_eq!(
            AnswerMatch::Exact.judge("red", "It is red.", &[]),
            (false, None)
        );
        // POPE's counts use what was read from the reply.
        let mut read = p("existence", Some("random"), "no", no);
        read.read = Some("no".into());
        let report = score("c", &[read]);
        assert_eq!(report.pope[0].yes_ratio, 0.0);
        assert_eq!(report.pope[0].accuracy, 1.0);
    }

    #[test]
    fn normalisation_ignores_case_punctuation_and_spacing() {
        assert_eq!(normalize_answer("  Top   Left. "), "top left");
        assert_eq!(normalize_answer("Yes!"), "yes");
    }

    #[test]
    fn baselines_and_accuracy() {
        let preds = vec![
            p("color", None, "red", "red"),
            p("color", None, "red", "blue"),
            p("color", None, "blue", "blue"),
            p("color", None, "green", "red"),
        ];
        let r = score("x", &preds);
        let c = &r.families[0];
        assert_eq!((c.n, c.correct), (4, 2));
        assert!((c.chance - 1.0 / 3.0).abs() < 1e-12);
        assert!((c.majority - 0.5).abs() < 1e-12);
        assert_eq!(c.majority_answer, "red");
    }

    #[test]
    fn chance_of_choice_questions_counts_their_options() {
        let preds = [
            p("relation", None, "left", "left"),
            p("relation", None, "above", "left"),
            p("relation", None, "below", "below"),
            p("relation", None, "right", "left"),
        ]
        .map(|q| offering(&["x", "y"], q));
        let r = score("x", &preds);
        assert!(
            (r.families[0].chance - 0.5).abs() < 1e-12,
            "two options each, not four answers"
        );
    }

    #[test]
    fn families_with_several_option_sets_are_scored_per_form() {
        let (left_right, above_below) = (["left", "right"], ["above", "below"]);
        let preds = [
            offering(&left_right, p("relation", None, "left", "right")),
            offering(&left_right, p("relation", None, "right", "left")),
            offering(&above_below, p("relation", None, "above", "above")),
            offering(&above_below, p("relation", None, "below", "below")),
            offering(&above_below, p("relation", None, "above", "below")),
            offering(&["yes", "no"], p("existence", None, "yes", "yes")),
        ];
        let r = score("x", &preds);
        let keys: Vec<String> = r.forms.iter().map(FamilyScore::key).collect();
        assert_eq!(keys, ["relation: above/below", "relation: left/right"]);
        for key in &keys {
            assert!(r.score_of(key).unwrap().has_key(key), "{key}");
        }
        assert!(r.score_of("relation: left").is_none());
        assert_eq!(r.score_of("relation").unwrap().form, None);
        assert_eq!((r.forms[0].n, r.forms[0].correct), (3, 2));
        assert_eq!((r.forms[1].n, r.forms[1].correct), (2, 0));
        assert!((r.forms[1].chance - 0.5).abs() < 1e-12);
        assert_eq!(r.families[1].key(), "relation");
        let table = r.table();
        // Each form indented under its family.
        let lines: Vec<&str> = table.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with("relation "))
            .unwrap();
        assert!(lines[at + 1].starts_with("  above/below "), "{table}");
        let left_right: Vec<&str> = lines[at + 2].split_whitespace().collect();
        assert_eq!(left_right[..3], ["left/right", "2", "0.0%"], "{table}");
        // One option set is the family itself: no forms for existence.
        assert!(r.forms.iter().all(|f| f.family == "relation"));
        // Reports written before forms existed still read.
        let old = r#"{"checkpoint":"x","samples":0,"accuracy":0.0,"families":[],"pope":[]}"#;
        assert!(serde_json::from_str::<EvalReport>(old)
            .unwrap()
            .forms
            .is_empty());
    }

    #[test]
    fn pope_metrics() {
        let preds = vec![
            p("existence", Some("random"), "yes", "yes"),
            p("existence", Some("random"), "no", "yes"),
            p("existence", Some("popular"), "no", "no"),
            p("existence", Some("popular"), "yes", "no"),
        ];
        let r = score("x", &preds);
        let all = r.pope.iter().find(|s| s.subset == "all").unwrap();
        assert_eq!(all.n, 4);
        assert!((all.accuracy - 0.5).abs() < 1e-12);
        assert!((all.precision - 0.5).abs() < 1e-12);
        assert!((all.recall - 0.5).abs() < 1e-12);
        assert!((all.yes_ratio - 0.5).abs() < 1e-12);
        let random = r.pope.iter().find(|s| s.subset == "random").unwrap();
        assert!((random.recall - 1.0).abs() < 1e-12 && (random.precision - 0.5).abs() < 1e-12);
    }
}
