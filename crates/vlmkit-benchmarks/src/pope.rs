//! POPE, as LLaVA-1.5 scores it (`llava/eval/eval_pope.py`).
//!
//! The annotation directory holds POPE's `coco_pope_<sampler>.json` files (JSON
//! lines with `label`); LLaVA's `llava_pope_test.jsonl` gives each question's
//! `category` (its sampler). Per sampler, the answers of its questions, in the
//! answers file's order, are matched with the labels in the label file's order:
//! the official script pairs them by position and nothing else. Here the counts
//! must agree and, where both give an image, each pair must be of one image, so
//! answers out of order are refused rather than scored against the wrong labels.
//!
//! LLaVA's yes/no rule: keep the text before the first period, drop commas,
//! split on spaces; `No`, `no` or `not` among the words is "no", anything else
//! (an empty reply, "not sure" aside) is "yes". The headline is the mean F1
//! over the samplers, × 100 (LLaVA-1.5-7B: 85.9).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::files::{read_json_lines, take_id};
use crate::table::{two, Table};
use crate::{Benchmark, BenchmarkError, Convention, Inputs, LmmsEval, Outcome, QuestionId, Score};

pub(crate) struct Pope;

const NAME: &str = "pope";

/// A yes/no reply read by LLaVA's rule: `true` for yes.
pub(crate) fn llava_reads_yes(reply: &str) -> bool {
    let first_sentence = reply.split('.').next().unwrap_or("");
    let text = first_sentence.replace(',', "");
    !text
        .split(' ')
        .any(|w| w == "No" || w == "not" || w == "no")
}

/// A reply as a convention reads it: yes, no, or (lmms-eval only) neither.
fn read(reply: &str, convention: Convention) -> Option<bool> {
    match convention {
        Convention::Llava => Some(llava_reads_yes(reply)),
        // `pope_process_results`: the lower-cased, stripped reply must *be* the answer.
        Convention::LmmsEval => {
            match crate::pytext::strip(&crate::pytext::lmms_eval_reply(reply).to_lowercase()) {
                "yes" => Some(true),
                "no" => Some(false),
                _ => None,
            }
        }
    }
}

/// Predictions against labels (yes = positive); a reply read as neither is
/// `other_*` by its label.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Confusion {
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    pub fn_: usize,
    pub other_yes: usize,
    pub other_no: usize,
}

impl Confusion {
    pub fn add(&mut self, predicted: Option<bool>, label_yes: bool) {
        match (predicted, label_yes) {
            (Some(true), true) => self.tp += 1,
            (Some(true), false) => self.fp += 1,
            (Some(false), false) => self.tn += 1,
            (Some(false), true) => self.fn_ += 1,
            (None, true) => self.other_yes += 1,
            (None, false) => self.other_no += 1,
        }
    }

    fn merge(&mut self, other: &Confusion) {
        self.tp += other.tp;
        self.fp += other.fp;
        self.tn += other.tn;
        self.fn_ += other.fn_;
        self.other_yes += other.other_yes;
        self.other_no += other.other_no;
    }

    fn total(&self) -> usize {
        self.tp + self.fp + self.tn + self.fn_ + self.other_yes + self.other_no
    }

    /// Accuracy, precision, recall, F1, yes-ratio; a ratio with a zero
    /// denominator is 0 and named in `undefined`. Under lmms-eval a reply read
    /// as neither is wrong and counts in neither precision nor recall, and its
    /// `pope_yes_ratio` is the share of yes *labels*.
    fn metrics(
        &self,
        convention: Convention,
        undefined: &mut Vec<&'static str>,
    ) -> Map<String, Value> {
        let mut ratio = |name: &'static str, num: usize, den: usize| {
            if den == 0 {
                undefined.push(name);
                0.0
            } else {
                num as f64 / den as f64
            }
        };
        let precision = ratio("precision", self.tp, self.tp + self.fp);
        let recall = ratio("recall", self.tp, self.tp + self.fn_);
        let f1 = if precision + recall == 0.0 {
            undefined.push("f1");
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        let accuracy = (self.tp + self.tn) as f64 / self.total() as f64;
        let yes_ratio = match convention {
            Convention::Llava => (self.tp + self.fp) as f64 / self.total() as f64,
            Convention::LmmsEval => {
                (self.tp + self.fn_ + self.other_yes) as f64 / self.total() as f64
            }
        };
        crate::into_map(json!({
            "samples": self.total(),
            "tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn_,
            "neither_yes_nor_no": self.other_yes + self.other_no,
            "accuracy": accuracy,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "yes_ratio": yes_ratio,
        }))
    }
}

struct Question {
    category: String,
    image: Option<String>,
}

struct Label {
    yes: bool,
    image: Option<String>,
}

/// `coco_pope_<sampler>.json` files of `dir`, by sampler, sorted.
fn label_files(dir: &Path) -> Result<BTreeMap<String, PathBuf>, BenchmarkError> {
    let entries = std::fs::read_dir(dir).map_err(|e| BenchmarkError::io(dir, e))?;
    let mut files = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|e| BenchmarkError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(sampler) = name
            .strip_prefix("coco_pope_")
            .and_then(|n| n.strip_suffix(".json"))
        {
            files.insert(sampler.to_owned(), entry.path());
        }
    }
    if files.is_empty() {
        return Err(BenchmarkError::format(
            dir,
            None,
            "holds no coco_pope_<sampler>.json label files (POPE's output/coco directory)",
        ));
    }
    Ok(files)
}

fn image_name(value: Option<&Value>) -> Option<String> {
    let path = value?.as_str()?;
    Some(path.rsplit(['/', '\\']).next().unwrap_or(path).to_owned())
}

fn read_labels(path: &Path) -> Result<Vec<Label>, BenchmarkError> {
    read_json_lines(path)?
        .into_iter()
        .map(|(line, object)| {
            let yes = match object.get("label").and_then(Value::as_str) {
                // eval_pope.py: 'no' is 0, any other label 1.
                Some(label) => label != "no",
                None => {
                    return Err(BenchmarkError::format(
                        path,
                        Some(line),
                        "no string `label`",
                    ))
                }
            };
            Ok(Label {
                yes,
                image: image_name(object.get("image")),
            })
        })
        .collect()
}

fn read_questions(path: &Path) -> Result<HashMap<QuestionId, Question>, BenchmarkError> {
    let mut questions = HashMap::new();
    for (line, mut object) in read_json_lines(path)? {
        let id = take_id(&mut object, "question_id", path, line)?;
        let category = match object.get("category").and_then(Value::as_str) {
            Some(category) => category.to_owned(),
            None => {
                return Err(BenchmarkError::format(
                    path,
                    Some(line),
                    "no string `category` (POPE's sampler)",
                ))
            }
        };
        let image = image_name(object.get("image"));
        if questions
            .insert(id.clone(), Question { category, image })
            .is_some()
        {
            return Err(BenchmarkError::format(
                path,
                Some(line),
                format!("question {id} appears twice"),
            ));
        }
    }
    Ok(questions)
}

impl Benchmark for Pope {
    fn name(&self) -> &'static str {
        NAME
    }

    fn column(&self) -> &'static str {
        "POPE"
    }

    fn inputs_help(&self) -> &'static str {
        "--annotations: POPE's output/coco directory (coco_pope_{adversarial,popular,random}.json); \
         --questions: LLaVA's llava_pope_test.jsonl (each question's `category`)"
    }

    fn lmms_eval(&self) -> LmmsEval {
        LmmsEval::Own
    }

    fn score(&self, inputs: &Inputs<'_>) -> Result<Outcome, BenchmarkError> {
        let dir = inputs.annotations(NAME, "POPE's coco_pope_<sampler>.json directory")?;
        let questions_path = inputs.questions(
            NAME,
            "LLaVA's llava_pope_test.jsonl, which gives each question's sampler",
        )?;
        let files = label_files(dir)?;
        let questions = read_questions(questions_path)?;
        let answers = inputs.answers;
        let by_id = answers.by_id()?;

        for (id, question) in &questions {
            if !files.contains_key(&question.category) {
                return Err(BenchmarkError::BadEntry {
                    path: questions_path.to_owned(),
                    id: id.clone(),
                    message: format!(
                        "its category `{}` has no coco_pope_{}.json in {}",
                        question.category,
                        question.category,
                        dir.display()
                    ),
                });
            }
        }
        let mut missing: Vec<&QuestionId> = questions
            .keys()
            .filter(|id| !by_id.contains_key(id))
            .collect();
        missing.sort();
        answers.check_missing(questions_path, missing.into_iter())?;

        let convention = inputs.convention;
        let mut pooled = Confusion::default();
        let mut per_sampler = Map::new();
        let mut table = Table::new([
            "sampler",
            "samples",
            "accuracy",
            "precision",
            "recall",
            "F1",
            "yes-ratio",
        ]);
        let mut notes = Vec::new();
        let mut f1_sum = 0.0;
        for (sampler, label_path) in &files {
            let labels = read_labels(label_path)?;
            let mut sampler_answers = Vec::new();
            for answer in &answers.answers {
                let question = questions
                    .get(&answer.question_id)
                    .ok_or_else(|| answers.unknown(answer, questions_path, None))?;
                if question.category == *sampler {
                    sampler_answers.push((answer, question));
                }
            }
            if sampler_answers.len() != labels.len() {
                return Err(BenchmarkError::CountMismatch {
                    what: format!("answers to `{sampler}` questions"),
                    found_in: answers.path.clone(),
                    found: sampler_answers.len(),
                    expected_in: label_path.clone(),
                    expected: labels.len(),
                });
            }
            let mut confusion = Confusion::default();
            for (index, ((answer, question), label)) in
                sampler_answers.iter().zip(&labels).enumerate()
            {
                if let (Some(asked), Some(labelled)) = (&question.image, &label.image) {
                    if asked != labelled {
                        return Err(BenchmarkError::BadEntry {
                            path: answers.path.clone(),
                            id: answer.question_id.clone(),
                            message: format!(
                                "line {}: it is `{sampler}` answer {} in file order, about image {asked}, but label {} of {} \
                                 is about {labelled}: the answers are not in the label file's order",
                                answer.line,
                                index + 1,
                                index + 1,
                                label_path.display()
                            ),
                        });
                    }
                }
                confusion.add(read(&answer.text, convention), label.yes);
            }
            pooled.merge(&confusion);
            let mut undefined = Vec::new();
            let metrics = confusion.metrics(convention, &mut undefined);
            if !undefined.is_empty() {
                notes.push(format!(
                    "{sampler}: {} set to 0 — a zero denominator{}",
                    undefined.join(", "),
                    if convention == Convention::Llava {
                        ", where eval_pope.py stops with ZeroDivisionError"
                    } else {
                        ""
                    }
                ));
            }
            let get = |key: &str| metrics[key].as_f64().unwrap_or(0.0);
            f1_sum += get("f1");
            table.row([
                sampler.clone(),
                confusion.total().to_string(),
                two(100.0 * get("accuracy")),
                two(100.0 * get("precision")),
                two(100.0 * get("recall")),
                two(100.0 * get("f1")),
                two(100.0 * get("yes_ratio")),
            ]);
            per_sampler.insert(sampler.clone(), Value::Object(metrics));
        }
        let mean_f1 = f1_sum / files.len() as f64;
        let mean = |key: &str| {
            per_sampler
                .values()
                .map(|m| m[key].as_f64().unwrap_or(0.0))
                .sum::<f64>()
                / per_sampler.len() as f64
        };
        let mean_accuracy = mean("accuracy");
        table.row([
            "mean".to_owned(),
            String::new(),
            two(100.0 * mean_accuracy),
            two(100.0 * mean("precision")),
            two(100.0 * mean("recall")),
            two(100.0 * mean_f1),
            two(100.0 * mean("yes_ratio")),
        ]);
        let mut metrics = Map::new();
        metrics.insert("samplers".into(), Value::Object(per_sampler));
        metrics.insert("mean_f1".into(), json!(mean_f1));
        metrics.insert("mean_accuracy".into(), json!(mean_accuracy));
        let (score, headline) = match convention {
            Convention::Llava => (100.0 * mean_f1, "mean F1 over the samplers, × 100"),
            Convention::LmmsEval => {
                // lmms-eval's `pope` task pools every sampler's questions.
                let all = pooled.metrics(convention, &mut Vec::new());
                let f1 = all["f1"].as_f64().unwrap_or(0.0);
                table.row([
                    "pooled".to_owned(),
                    pooled.total().to_string(),
                    two(100.0 * all["accuracy"].as_f64().unwrap_or(0.0)),
                    two(100.0 * all["precision"].as_f64().unwrap_or(0.0)),
                    two(100.0 * all["recall"].as_f64().unwrap_or(0.0)),
                    two(100.0 * f1),
                    two(100.0 * all["yes_ratio"].as_f64().unwrap_or(0.0)),
                ]);
                metrics.insert("pooled".into(), Value::Object(all));
                (100.0 * f1, "F1 over all samplers' questions pooled, × 100")
            }
        };
        Ok(Outcome::Score(Score {
            benchmark: NAME,
            convention,
            score,
            headline,
            unit: "F1 × 100",
            metrics,
            notes,
            table,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llava_rule() {
        for (reply, yes) in [
            ("Yes", true),
            ("Yes, there is.", true),
            ("No.", false),
            ("no", false),
            ("not sure", false),
            ("", true),
            ("There is a dog. No cat.", true),
            ("No, there is not.", false),
            ("NO", true),
            ("Nope", true),
            ("no,", false),
        ] {
            assert_eq!(llava_reads_yes(reply), yes, "{reply:?}");
        }
    }

    #[test]
    fn lmms_eval_rule() {
        assert_eq!(read(" YES ", Convention::LmmsEval), Some(true));
        assert_eq!(read("No.", Convention::LmmsEval), None);
        assert_eq!(read("", Convention::LmmsEval), None);
    }
}
