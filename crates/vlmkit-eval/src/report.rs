//! An evaluation's report: the overall numbers and each scorer's results under
//! the names it gives them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::scorer::{read_sections, FamilyScorer, FamilyScores, Scorer, ScorerRegistry};
use crate::Prediction;

/// What an evaluation found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub checkpoint: String,
    pub samples: usize,
    /// Accuracy over every question.
    pub accuracy: f64,
    /// Questions the model could not be asked (counted wrong).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unanswered: usize,
    /// Each scorer's results under the names it gives them (the families
    /// scorer's `families` and `forms`, POPE's `pope`): a report carries any
    /// scorer's numbers without knowing their shape, and a `report.json` written
    /// before scorers were pluggable reads the same.
    #[serde(flatten)]
    pub sections: Map<String, Value>,
}

/// Scores `predictions` (already marked correct or not) with the built-in
/// scorers.
pub fn score(checkpoint: &str, predictions: &[Prediction]) -> EvalReport {
    score_with(checkpoint, predictions, &ScorerRegistry::default())
}

/// Scores `predictions` with every scorer of `scorers` that applies.
pub fn score_with(
    checkpoint: &str,
    predictions: &[Prediction],
    scorers: &ScorerRegistry,
) -> EvalReport {
    let correct = predictions.iter().filter(|p| p.correct).count();
    let mut sections = Map::new();
    for scorer in scorers.iter() {
        if let Some(found) = scorer.score(predictions) {
            sections.extend(found);
        }
    }
    EvalReport {
        checkpoint: checkpoint.to_string(),
        samples: predictions.len(),
        accuracy: if predictions.is_empty() {
            0.0
        } else {
            correct as f64 / predictions.len() as f64
        },
        unanswered: predictions
            .iter()
            .filter(|p| p.unanswered.is_some())
            .count(),
        sections,
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl EvalReport {
    /// Scorer `S`'s results, when the report holds them.
    pub fn section<S: Scorer>(&self) -> Option<S::Output> {
        read_sections::<S>(&self.sections)
    }

    /// The per-family results (empty when the report holds none).
    pub fn families(&self) -> FamilyScores {
        self.section::<FamilyScorer>().unwrap_or_default()
    }

    /// Every built-in scorer's table.
    pub fn table(&self) -> String {
        self.table_with(&ScorerRegistry::default())
    }

    /// The tables of `scorers`' results, in their order.
    pub fn table_with(&self, scorers: &ScorerRegistry) -> String {
        scorers
            .iter()
            .filter_map(|scorer| scorer.table(&self.sections))
            .collect()
    }

    /// Per-family accuracy as a bar chart with each family's best baseline marked.
    pub fn save_chart(
        &self,
        title: &str,
        path: &std::path::Path,
    ) -> Result<(), vlmkit_plot::PlotError> {
        self.families().save_chart(title, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{normalize_answer, AnswerMatch, FamilyScore, PopeScore, PopeScorer, PopeScores};

    /// The built-in scorers' results on some predictions, as the tests read them.
    struct Scored {
        families: Vec<FamilyScore>,
        forms: Vec<FamilyScore>,
        pope: Vec<PopeScore>,
        report: EvalReport,
    }

    impl Scored {
        fn score_of(&self, key: &str) -> Option<&FamilyScore> {
            self.forms
                .iter()
                .chain(&self.families)
                .find(|f| f.has_key(key))
        }

        fn table(&self) -> String {
            self.report.table()
        }
    }

    fn score(checkpoint: &str, predictions: &[Prediction]) -> Scored {
        let report = super::score(checkpoint, predictions);
        let FamilyScores { families, forms } = report.families();
        let pope = report
            .section::<PopeScorer>()
            .map_or_else(Vec::new, |s: PopeScores| s.pope);
        Scored {
            families,
            forms,
            pope,
            report,
        }
    }

    fn p(family: &str, pope: Option<&str>, answer: &str, prediction: &str) -> Prediction {
        Prediction {
            id: String::new(),
            family: family.into(),
            tags: pope
                .map(|s| ("pope".to_string(), s.to_string()))
                .into_iter()
                .collect(),
            question: String::new(),
            options: Vec::new(),
            answer: answer.into(),
            prediction: prediction.into(),
            read: None,
            correct: normalize_answer(answer) == normalize_answer(prediction),
            unanswered: None,
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

    /// A few questions answer few of their family's answers: chance comes from
    /// the family (the tag the built-in data sets), not from the answers seen
    /// (it used to read 1/3 here, not 1/6).
    #[test]
    fn chance_of_open_questions_comes_from_the_family_s_answers() {
        let tagged = |answer: &str, prediction: &str| {
            let mut p = p("color", None, answer, prediction);
            p.tags
                .insert(crate::scorer::ANSWER_COUNT_TAG.to_string(), "6".to_string());
            p
        };
        let preds = vec![
            tagged("red", "red"),
            tagged("blue", "blue"),
            tagged("green", "red"),
        ];
        let c = &score("x", &preds).families[0];
        assert!((c.chance - 1.0 / 6.0).abs() < 1e-12, "{}", c.chance);
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
            .families()
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

    /// A report and a prediction as the vlmkit before pluggable scorers wrote
    /// them (commit 8e04ef5, `vlmkit eval` of a 20-step `mlp` run; the report
    /// cut to two families and two POPE rows): read, scored and printed as then.
    #[test]
    fn files_written_before_scorers_were_pluggable_read_the_same() {
        let old = r#"{"checkpoint": "/tmp/noop/before/mlp/final", "samples": 200, "accuracy": 0.21, "families": [{"family": "existence", "n": 42, "correct": 20, "accuracy": 0.47619047619047616, "chance": 0.5, "majority": 0.5952380952380952, "majority_answer": "no"}, {"family": "relation", "n": 38, "correct": 15, "accuracy": 0.39473684210526316, "chance": 0.5, "majority": 0.2894736842105263, "majority_answer": "right"}], "forms": [{"family": "relation", "form": "above/below", "n": 17, "correct": 6, "accuracy": 0.35294117647058826, "chance": 0.5, "majority": 0.5294117647058824, "majority_answer": "above"}, {"family": "relation", "form": "left/right", "n": 21, "correct": 9, "accuracy": 0.42857142857142855, "chance": 0.5, "majority": 0.5238095238095238, "majority_answer": "right"}], "pope": [{"subset": "random", "n": 17, "accuracy": 0.5294117647058824, "precision": 0.3333333333333333, "recall": 0.3333333333333333, "f1": 0.3333333333333333, "yes_ratio": 0.35294117647058826}, {"subset": "all", "n": 42, "accuracy": 0.47619047619047616, "precision": 0.2222222222222222, "recall": 0.11764705882352941, "f1": 0.15384615384615383, "yes_ratio": 0.21428571428571427}]}"#;
        let report: EvalReport = serde_json::from_str(old).unwrap();
        assert_eq!(report.samples, 200);
        let families = report.families();
        assert_eq!(families.families.len(), 2);
        assert_eq!(families.score_of("relation: left/right").unwrap().n, 21);
        let pope = report.section::<PopeScorer>().unwrap().pope;
        assert_eq!((pope.len(), pope[1].subset.as_str()), (2, "all"));
        // The rows that vlmkit printed for this report.
        let table = report.table();
        for line in [
            "existence          42     47.6%    50.0%     59.5%     -11.9",
            "relation           38     39.5%    50.0%     28.9%     -10.5",
            "  above/below      17     35.3%    50.0%     52.9%     -17.6",
            "  left/right       21     42.9%    50.0%     52.4%      -9.5",
            "POPE (existence)       n  accuracy  precision  recall      F1  yes-ratio",
            "random                17     52.9%      33.3%   33.3%   33.3%      35.3%",
            "all                   42     47.6%      22.2%   11.8%   15.4%      21.4%",
        ] {
            assert!(table.lines().any(|l| l == line), "{line:?} not in\n{table}");
        }
        // Written back, the report is the same JSON.
        let again: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(
            again,
            serde_json::from_str::<serde_json::Value>(old).unwrap()
        );

        let line = r#"{"id":"shapes-eval-000016","family":"existence","pope":"popular","question":"Is there a yellow circle in the image?","options":["yes","no"],"answer":"yes","prediction":"no","correct":false}"#;
        let prediction: Prediction = serde_json::from_str(line).unwrap();
        assert_eq!(prediction.tag("pope"), Some("popular"));
        assert_eq!(serde_json::to_string(&prediction).unwrap(), line);
    }

    /// `Prediction::FIELDS`, which tags may not take, are exactly the keys a
    /// prediction writes of its own (kept by hand beside the struct).
    #[test]
    fn reserved_tag_names_are_the_prediction_fields() {
        let mut full = p("color", None, "red", "red");
        full.options = vec!["red".into()];
        full.read = Some("red".into());
        full.unanswered = Some("too long".into());
        let json = serde_json::to_value(&full).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut fields = Prediction::FIELDS.to_vec();
        keys.sort_unstable();
        fields.sort_unstable();
        assert_eq!(keys, fields);
    }
}
