//! GQA (testdev-balanced), as LLaVA-1.5 scores it: `scripts/convert_gqa_for_eval.py`
//! turns each reply into `text.rstrip('.').lower()`, and GQA's `eval.py` (with
//! LLaVA's edit for the missing testdev assets) compares it with `answer` by
//! plain string equality over the balanced questions.
//!
//! Beside accuracy this gives what that script prints: binary and open
//! accuracy (open = structural type `query`), accuracy per structural and
//! semantic type, per number of reasoning steps and of words, and the
//! distribution score (a chi-square over `groups.global`, / 100, lower is
//! better). Validity and plausibility need the choices file testdev lacks (the
//! script prints 0.00 for both) and are not given. The script stops when a
//! balanced question has no prediction; so does this.
//!
//! lmms-eval (`gqa`) strips the reply, then compares lower-cased with the 32
//! ASCII punctuation characters deleted from both sides (`exact_match` with
//! `ignore_case` and `ignore_punctuation`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::files::{read_text, Ordered};
use crate::table::{two, Table};
use crate::{
    into_map, pytext, Benchmark, BenchmarkError, Convention, Inputs, LmmsEval, Outcome, QuestionId,
    Score,
};

pub(crate) struct Gqa;

const NAME: &str = "gqa";

/// LLaVA's reading of a reply.
fn llava_prediction(reply: &str) -> String {
    reply.trim_end_matches('.').to_lowercase()
}

/// `string.punctuation`.
const ASCII_PUNCTUATION: &str = r##"!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~"##;

/// lmms-eval's `exact_match` normalisation with `ignore_case` and
/// `ignore_punctuation`, as numpy computes it: `np.char.lower` keeps the
/// input's length (a lower case longer than its letter is cut) and numpy
/// strings drop trailing NULs.
pub(crate) fn lmms_eval_exact(text: &str) -> String {
    let text = text.trim_end_matches('\0');
    let lower: String = text
        .to_lowercase()
        .chars()
        .take(text.chars().count())
        .collect();
    lower
        .chars()
        .filter(|c| !ASCII_PUNCTUATION.contains(*c))
        .collect()
}

struct Question {
    id: QuestionId,
    answer: String,
    structural: String,
    semantic: String,
    steps: usize,
    words: usize,
    global_group: Option<String>,
}

fn read_questions(path: &Path) -> Result<Vec<Question>, BenchmarkError> {
    let text = read_text(path)?;
    let Ordered(entries) = serde_json::from_str(&text).map_err(|e| {
        BenchmarkError::format(
            path,
            Some(e.line()),
            format!("{e} (expected GQA's questions object)"),
        )
    })?;
    let mut questions = Vec::with_capacity(entries.len());
    for (id, q) in entries {
        let id = QuestionId::new(id);
        let bad = |message: &str| BenchmarkError::BadEntry {
            path: path.to_owned(),
            id: id.clone(),
            message: message.to_owned(),
        };
        if !q
            .get("isBalanced")
            .and_then(Value::as_bool)
            .ok_or_else(|| bad("no boolean `isBalanced`"))?
        {
            continue;
        }
        let text_of = |value: Option<&Value>, what: &str| {
            value
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| bad(&format!("no string `{what}`")))
        };
        let types = q.get("types");
        let steps = q
            .get("semantic")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no `semantic` list"))?
            .iter()
            .filter(|step| {
                let operation = step.get("operation").and_then(Value::as_str).unwrap_or("");
                let argument = step.get("argument").and_then(Value::as_str).unwrap_or("");
                let step = format!("{operation}: {argument}");
                !["exist", "query: name", "choose name"]
                    .iter()
                    .any(|o| step.contains(o))
            })
            .count();
        let question = text_of(q.get("question"), "question")?;
        questions.push(Question {
            answer: text_of(q.get("answer"), "answer")?,
            structural: text_of(types.and_then(|t| t.get("structural")), "types.structural")?,
            semantic: text_of(types.and_then(|t| t.get("semantic")), "types.semantic")?,
            steps,
            words: pytext::split(&question).count(),
            global_group: q
                .get("groups")
                .and_then(|g| g.get("global"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            id,
        });
    }
    Ok(questions)
}

/// GQA's chi-square of predicted against gold answers per global group, each
/// group weighted by its questions; sums in order of first appearance.
fn chi_square(pairs: &[(&str, &str, &str)]) -> Option<f64> {
    // Per group: gold answer counts in order of first appearance, predicted counts.
    type Group<'a> = (&'a str, Vec<(&'a str, usize)>, HashMap<&'a str, usize>);
    let mut groups: Vec<Group> = Vec::new();
    for &(group, gold, predicted) in pairs {
        let slot = match groups.iter().position(|(g, ..)| *g == group) {
            Some(i) => i,
            None => {
                groups.push((group, Vec::new(), HashMap::new()));
                groups.len() - 1
            }
        };
        let (_, gold_counts, predicted_counts) = &mut groups[slot];
        match gold_counts.iter_mut().find(|(a, _)| *a == gold) {
            Some((_, n)) => *n += 1,
            None => gold_counts.push((gold, 1)),
        }
        *predicted_counts.entry(predicted).or_default() += 1;
    }
    let (mut sum_score, mut sum_overall) = (0.0f64, 0usize);
    for (_, gold_counts, predicted_counts) in &groups {
        let (mut score, mut overall) = (0.0f64, 0usize);
        for (answer, expected) in gold_counts {
            let observed = predicted_counts.get(answer).copied().unwrap_or(0);
            score += (observed as f64 - *expected as f64).powi(2) / *expected as f64;
            overall += expected;
        }
        sum_score += score * overall as f64;
        sum_overall += overall;
    }
    (sum_overall > 0).then(|| sum_score / sum_overall as f64)
}

/// `avg(scores) * 100` as the script computes it: divide, then multiply.
fn percent_of(scores: &[bool]) -> f64 {
    scores.iter().filter(|s| **s).count() as f64 / scores.len() as f64 * 100.0
}

impl Benchmark for Gqa {
    fn name(&self) -> &'static str {
        NAME
    }

    fn column(&self) -> &'static str {
        "GQA"
    }

    fn inputs_help(&self) -> &'static str {
        "--annotations: testdev_balanced_questions.json (GQA's questions1.2)"
    }

    fn lmms_eval(&self) -> LmmsEval {
        LmmsEval::Own
    }

    fn score(&self, inputs: &Inputs<'_>) -> Result<Outcome, BenchmarkError> {
        let path = inputs.annotations(NAME, "GQA's testdev_balanced_questions.json")?;
        let questions = read_questions(path)?;
        let answers = inputs.answers;
        let ids: Vec<&QuestionId> = questions.iter().map(|q| &q.id).collect();
        let by_id = answers.one_per_question(path, &ids, Some("its balanced questions".into()))?;

        let mut all = Vec::with_capacity(questions.len());
        let (mut binary, mut open) = (Vec::new(), Vec::new());
        let mut structural: BTreeMap<&str, Vec<bool>> = BTreeMap::new();
        let mut semantic: BTreeMap<&str, Vec<bool>> = BTreeMap::new();
        let mut steps: BTreeMap<usize, Vec<bool>> = BTreeMap::new();
        let mut words: BTreeMap<usize, Vec<bool>> = BTreeMap::new();
        let predictions: Vec<String> = questions
            .iter()
            .map(|q| {
                let reply = &by_id[&q.id].text;
                match inputs.convention {
                    Convention::Llava => llava_prediction(reply),
                    Convention::LmmsEval => lmms_eval_exact(&pytext::lmms_eval_reply(reply)),
                }
            })
            .collect();
        let mut distribution = Vec::new();
        for (q, predicted) in questions.iter().zip(&predictions) {
            let right = match inputs.convention {
                Convention::Llava => *predicted == q.answer,
                Convention::LmmsEval => *predicted == lmms_eval_exact(&q.answer),
            };
            all.push(right);
            if q.structural == "query" {
                &mut open
            } else {
                &mut binary
            }
            .push(right);
            structural.entry(&q.structural).or_default().push(right);
            semantic.entry(&q.semantic).or_default().push(right);
            steps.entry(q.steps).or_default().push(right);
            words.entry(q.words).or_default().push(right);
            if let Some(group) = &q.global_group {
                distribution.push((group.as_str(), q.answer.as_str(), predicted.as_str()));
            }
        }
        let accuracy = percent_of(&all);
        let mut table = Table::new(["", "questions", "accuracy"]);
        table.row(["accuracy".to_owned(), all.len().to_string(), two(accuracy)]);
        let binary_accuracy = (!binary.is_empty()).then(|| percent_of(&binary));
        let open_accuracy = (!open.is_empty()).then(|| percent_of(&open));
        if let Some(b) = binary_accuracy {
            table.row(["binary".to_owned(), binary.len().to_string(), two(b)]);
        }
        if let Some(o) = open_accuracy {
            table.row(["open".to_owned(), open.len().to_string(), two(o)]);
        }
        // Per-type accuracies: all in the JSON; the structural and semantic ones printed.
        fn per<K: ToString>(
            groups: &BTreeMap<K, Vec<bool>>,
            mut row: impl FnMut(String, usize, f64),
        ) -> Map<String, Value> {
            let mut map = Map::new();
            for (key, scores) in groups {
                let a = percent_of(scores);
                row(key.to_string(), scores.len(), a);
                map.insert(
                    key.to_string(),
                    json!({"accuracy": a, "questions": scores.len()}),
                );
            }
            map
        }
        let structural_map = per(&structural, |k, n, a| {
            table.row([format!("structural {k}"), n.to_string(), two(a)]);
        });
        let semantic_map = per(&semantic, |k, n, a| {
            table.row([format!("semantic {k}"), n.to_string(), two(a)]);
        });
        let steps_map = per(&steps, |_, _, _| {});
        let words_map = per(&words, |_, _, _| {});
        // GQA's own metric: lmms-eval does not compute it.
        let distribution = match inputs.convention {
            Convention::Llava => chi_square(&distribution).map(|d| d / 100.0),
            Convention::LmmsEval => None,
        };
        if let Some(d) = distribution {
            table.row([
                "distribution (lower is better)".to_owned(),
                String::new(),
                two(d),
            ]);
        }
        Ok(Outcome::Score(Score {
            benchmark: NAME,
            convention: inputs.convention,
            score: accuracy,
            headline: "exact-match accuracy on the balanced questions, %",
            unit: "%",
            metrics: into_map(json!({
                "accuracy": accuracy,
                "questions": all.len(),
                "binary": binary_accuracy,
                "open": open_accuracy,
                "per_structural_type": structural_map,
                "per_semantic_type": semantic_map,
                "per_steps": steps_map,
                "per_words": words_map,
                "distribution": distribution,
            })),
            notes: Vec::new(),
            table,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings() {
        assert_eq!(llava_prediction("Left.."), "left");
        assert_eq!(llava_prediction("Yes, it is."), "yes, it is");
        assert_eq!(lmms_eval_exact("T-Shirt!"), "tshirt");
        assert_eq!(lmms_eval_exact("café’s"), "café’s");
    }

    #[test]
    fn chi_square_by_hand() {
        // One group: gold yes ×2, no ×1; predicted yes ×3. (3-2)²/2 + (0-1)²/1 = 1.5, × 3 / 3.
        let pairs = [("g", "yes", "yes"), ("g", "yes", "yes"), ("g", "no", "yes")];
        assert_eq!(chi_square(&pairs), Some(1.5));
        assert_eq!(chi_square(&[]), None);
    }
}
