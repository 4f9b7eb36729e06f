//! TextVQA (val), as LLaVA-1.5 scores it (`llava/eval/eval_textvqa.py` with
//! `m4c_evaluator.py`).
//!
//! LLaVA's question file gives each question the *image's* id as `question_id`
//! (several questions share one), so an answer is joined with its annotation by
//! `(image_id, question)`, the question read back from the prompt as the
//! official script does: after `Question: ` up to ` Short answer:` for a prompt
//! that starts with `OCR tokens: `; else the line that is not the reference OCR
//! tokens, for a three-line prompt holding `Reference OCR token: `; else the
//! first line of a two-line prompt. The reply and the ten human answers go
//! through EvalAI's processor, and the score is the 10-choose-9 soft accuracy.
//!
//! lmms-eval (`textvqa_val`) asks without OCR tokens; its scoring is the same
//! processor and soft accuracy, so under its convention the prompt must be a
//! plain two-line one.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::{json, Value};

use crate::files::{kind, read_json};
use crate::table::{two, Table};
use crate::vqa_accuracy::soft_accuracy;
use crate::{
    into_map, Benchmark, BenchmarkError, Convention, Inputs, LmmsEval, Outcome, QuestionId, Score,
};

pub(crate) struct TextVqa;

const NAME: &str = "textvqa";

/// The question a LLaVA TextVQA prompt asks, lower-cased; `None` for a prompt
/// of none of the official script's shapes (where it stops on an assertion).
pub(crate) fn question_of_prompt(prompt: &str) -> Option<String> {
    static QUESTION: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?s)Question: (.*?) Short answer:").expect("valid"));
    let lines: Vec<&str> = prompt.split('\n').collect();
    let question = if prompt.starts_with("OCR tokens: ") {
        QUESTION.captures(prompt)?.get(1)?.as_str()
    } else if prompt.contains("Reference OCR token: ") && lines.len() == 3 {
        if prompt.starts_with("Reference OCR token:") {
            lines[1]
        } else {
            lines[0]
        }
    } else if lines.len() == 2 {
        lines[0]
    } else {
        return None;
    };
    Some(question.to_lowercase())
}

/// An `(image_id, lower-cased question)` key's annotation: the last of the
/// entries with that key (the official dict keeps the last), and how many
/// entries share it (each is a question to answer).
pub(crate) struct Keyed {
    pub id: QuestionId,
    pub answers: Vec<String>,
    pub entries: usize,
}

pub(crate) struct Annotations {
    pub by_key: HashMap<(String, String), Keyed>,
    /// In file order, for the missing-answer check.
    pub keys: Vec<(String, String)>,
}

fn read_annotations(path: &std::path::Path) -> Result<Annotations, BenchmarkError> {
    let file = read_json(path)?;
    let data = file.get("data").and_then(Value::as_array).ok_or_else(|| {
        BenchmarkError::format(path, None, "no `data` list (TextVQA_0.5.1_val.json)")
    })?;
    let mut annotations = Annotations {
        by_key: HashMap::with_capacity(data.len()),
        keys: Vec::with_capacity(data.len()),
    };
    for (index, entry) in data.iter().enumerate() {
        let id = entry
            .get("question_id")
            .and_then(QuestionId::from_json)
            .unwrap_or_else(|| QuestionId::new(format!("#{index}")));
        let bad = |message: String| BenchmarkError::BadEntry {
            path: path.to_owned(),
            id: id.clone(),
            message,
        };
        let image = entry
            .get("image_id")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no string `image_id`".into()))?;
        let question = entry
            .get("question")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no string `question`".into()))?;
        let answers: Vec<String> = match entry.get("answers").and_then(Value::as_array) {
            Some(list) => list
                .iter()
                .map(|a| {
                    a.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| bad(format!("an answer is {}", kind(a))))
                })
                .collect::<Result<_, _>>()?,
            None => {
                return Err(bad(
                    "no `answers` list (the test split has none: score val)".into(),
                ))
            }
        };
        if answers.len() != 10 {
            return Err(bad(format!(
                "{} human answers; the soft accuracy needs 10",
                answers.len()
            )));
        }
        let key = (image.to_owned(), question.to_lowercase());
        let entries = match annotations.by_key.get(&key) {
            Some(earlier) => earlier.entries + 1,
            None => {
                annotations.keys.push(key.clone());
                1
            }
        };
        annotations.by_key.insert(
            key,
            Keyed {
                id,
                answers,
                entries,
            },
        );
    }
    Ok(annotations)
}

impl Benchmark for TextVqa {
    fn name(&self) -> &'static str {
        NAME
    }

    fn column(&self) -> &'static str {
        "TextVQA"
    }

    fn inputs_help(&self) -> &'static str {
        "--annotations: TextVQA_0.5.1_val.json"
    }

    fn lmms_eval(&self) -> LmmsEval {
        LmmsEval::Own
    }

    fn score(&self, inputs: &Inputs<'_>) -> Result<Outcome, BenchmarkError> {
        let path = inputs.annotations(NAME, "TextVQA_0.5.1_val.json")?;
        let annotations = read_annotations(path)?;
        let answers = inputs.answers;
        // Answers per key, with the line of the first.
        let mut seen: HashMap<(String, String), (usize, usize)> = HashMap::new();
        let mut total = 0.0;
        let mut ocr_prompts = 0;
        for answer in &answers.answers {
            let prompt = answers.prompt(answer)?;
            let question = question_of_prompt(prompt).ok_or_else(|| {
                BenchmarkError::format(
                    &answers.path,
                    Some(answer.line),
                    format!(
                        "question {}: a prompt of none of eval_textvqa.py's shapes (two lines, three with \
                         `Reference OCR token: `, or `OCR tokens: … Question: … Short answer:`)",
                        answer.question_id
                    ),
                )
            })?;
            if prompt.contains("OCR token") {
                ocr_prompts += 1;
            }
            let key = (answer.question_id.as_str().to_owned(), question);
            let Some(keyed) = annotations.by_key.get(&key) else {
                return Err(answers.unknown(
                    answer,
                    path,
                    Some(format!("image `{}`, question `{}`", key.0, key.1)),
                ));
            };
            let (first_line, count) = seen.entry(key).or_insert((answer.line, 0));
            *count += 1;
            if *count > keyed.entries {
                return Err(BenchmarkError::DuplicateAnswer {
                    id: answer.question_id.clone(),
                    path: answers.path.clone(),
                    first_line: *first_line,
                    line: answer.line,
                });
            }
            total += soft_accuracy(&answer.text, &keyed.answers, inputs.convention);
        }
        let missing = annotations
            .keys
            .iter()
            .filter(|k| seen.get(*k).map_or(0, |(_, n)| *n) < annotations.by_key[*k].entries)
            .map(|k| &annotations.by_key[k].id);
        answers.check_missing(path, missing)?;
        if inputs.convention == Convention::LmmsEval && ocr_prompts > 0 {
            return Err(BenchmarkError::Unscorable {
                benchmark: NAME,
                reason: format!(
                    "{ocr_prompts} prompts carry OCR tokens, which lmms-eval's textvqa_val does not give; \
                     score these answers under --convention llava"
                ),
            });
        }
        let count = answers.answers.len();
        // `100. * evaluator.eval_pred_list(...)`: the mean first.
        let accuracy = 100.0 * (total / count as f64);
        let mut table = Table::new(["questions", "with OCR tokens", "accuracy"]);
        table.row([count.to_string(), ocr_prompts.to_string(), two(accuracy)]);
        Ok(Outcome::Score(Score {
            benchmark: NAME,
            convention: inputs.convention,
            score: accuracy,
            headline: "VQA soft accuracy (10 choose 9), %",
            unit: "%",
            metrics: into_map(json!({
                "accuracy": accuracy,
                "questions": count,
                "prompts_with_ocr_tokens": ocr_prompts,
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
    fn questions_read_back_from_prompts() {
        let q = question_of_prompt;
        assert_eq!(
            q("What is the Brand?\nReference OCR token: Nike, shoe\nAnswer the question using a single word or phrase.").as_deref(),
            Some("what is the brand?")
        );
        assert_eq!(
            q("Reference OCR token: a\nWhat year?\nAnswer the question using a single word or phrase.").as_deref(),
            Some("what year?")
        );
        assert_eq!(
            q("What year?\nAnswer the question using a single word or phrase.").as_deref(),
            Some("what year?")
        );
        assert_eq!(
            q("OCR tokens: x y Question: What\nis it? Short answer:").as_deref(),
            Some("what\nis it?")
        );
        assert_eq!(q("one line"), None);
        assert_eq!(q("OCR tokens: no question here"), None);
    }
}
