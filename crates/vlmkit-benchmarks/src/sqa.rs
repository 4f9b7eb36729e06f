//! ScienceQA, as LLaVA-1.5 scores it (`llava/eval/eval_science_qa.py`).
//!
//! `--annotations` is ScienceQA's data directory (`problems.json`,
//! `pid_splits.json`); the split is `test`. A reply is read as a letter by the
//! official rule: the reply is exactly one of A–E; else it starts with a letter
//! and ". " (`"B. blue"`); else it contains exactly one `The answer is X.`
//! (`X` any capital, `.` any character); else it is FAILED. A letter beyond the
//! problem's choices is wrong. The headline is IMG-accuracy, over the answers
//! whose prompt contains `<image>`, as LLaVA's answers (written by
//! `model_vqa_science.py`) keep it; overall accuracy is beside it.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::{json, Value};

use crate::files::{kind, read_json};
use crate::questions::OPTION_LETTER;
use crate::table::{two, Table};
use crate::{
    into_map, percent, pytext, Benchmark, BenchmarkError, Convention, Inputs, LmmsEval, Outcome,
    QuestionId, Score,
};
use crate::{Question, QuestionImage};

pub(crate) struct ScienceQa;

const NAME: &str = "sqa";
const SPLIT: &str = "test";
/// `--options` of the official script: its letters, whatever the choices.
const LETTERS: [&str; 5] = ["A", "B", "C", "D", "E"];

/// lmms-eval's `scienceqa_img` rule: the stripped reply is the letter (any
/// case), or starts with a capital and a period and that capital is the letter.
fn lmms_eval_right(reply: &str, answer: usize) -> bool {
    let target = char::from(b'a' + answer as u8).to_string();
    let pred = pytext::lmms_eval_reply(reply);
    let pred = pred.as_str();
    if pred.to_lowercase() == target {
        return true;
    }
    let mut chars = pred.chars();
    match (chars.next(), chars.next()) {
        (Some(first), Some('.')) if first.is_uppercase() => {
            first.to_lowercase().to_string() == target
        }
        _ => false,
    }
}

/// The letter LLaVA's rule reads from a reply, `None` for FAILED.
pub(crate) fn read_letter(reply: &str) -> Option<String> {
    static THE_ANSWER_IS: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"The answer is ([A-Z]).").expect("valid"));
    if LETTERS.contains(&reply) {
        return Some(reply.to_owned());
    }
    let first = reply.chars().next().map(String::from);
    if reply.chars().count() >= 3
        && first.as_deref().is_some_and(|c| LETTERS.contains(&c))
        && pytext::char_slice(reply, 1, 3) == Some(". ")
    {
        return first;
    }
    let found: Vec<_> = THE_ANSWER_IS.captures_iter(reply).collect();
    match found.as_slice() {
        [one] => Some(one[1].to_owned()),
        _ => None,
    }
}

struct Problem {
    id: QuestionId,
    answer: usize,
    choices: usize,
}

fn read_split(dir: &std::path::Path) -> Result<Vec<Problem>, BenchmarkError> {
    let splits_path = dir.join("pid_splits.json");
    let problems_path = dir.join("problems.json");
    let splits = read_json(&splits_path)?;
    let ids = splits.get(SPLIT).and_then(Value::as_array).ok_or_else(|| {
        BenchmarkError::format(
            &splits_path,
            None,
            format!("no `{SPLIT}` list of problem ids"),
        )
    })?;
    let problems = read_json(&problems_path)?;
    let problems = problems.as_object().ok_or_else(|| {
        BenchmarkError::format(&problems_path, None, "expected an object of problems by id")
    })?;
    ids.iter()
        .map(|id| {
            let id = QuestionId::from_json(id).ok_or_else(|| {
                BenchmarkError::format(
                    &splits_path,
                    None,
                    format!("`{SPLIT}` holds {}, not a problem id", kind(id)),
                )
            })?;
            let bad = |message: String| BenchmarkError::BadEntry {
                path: problems_path.clone(),
                id: id.clone(),
                message,
            };
            let problem = problems.get(id.as_str()).ok_or_else(|| {
                bad(format!(
                    "listed in {}'s `{SPLIT}` but not here",
                    splits_path.display()
                ))
            })?;
            let choices = problem
                .get("choices")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("no `choices` list".into()))?
                .len();
            let answer = problem
                .get("answer")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("no integer `answer`".into()))?
                as usize;
            Ok(Problem {
                id,
                answer,
                choices,
            })
        })
        .collect()
}

impl Benchmark for ScienceQa {
    fn name(&self) -> &'static str {
        NAME
    }

    fn column(&self) -> &'static str {
        "SQA-IMG"
    }

    fn inputs_help(&self) -> &'static str {
        "--annotations: ScienceQA's data directory (problems.json, pid_splits.json); split `test`"
    }

    fn lmms_eval(&self) -> LmmsEval {
        LmmsEval::Own
    }

    /// LLaVA's `llava_test_CQM-A.json` as `model_vqa_science.py
    /// --single-pred-prompt` asks it: the first human turn without `<image>`,
    /// stripped, with the option-letter instruction; the recorded prompt keeps
    /// `<image>\n` in front for a question with an image.
    fn questions(&self, path: &std::path::Path) -> Result<Vec<Question>, BenchmarkError> {
        let file = read_json(path)?;
        let list = file.as_array().ok_or_else(|| {
            BenchmarkError::format(
                path,
                None,
                "expected LLaVA's list of ScienceQA conversations",
            )
        })?;
        list.iter()
            .enumerate()
            .map(|(index, entry)| {
                let bad = |message: &str| {
                    BenchmarkError::format(path, None, format!("entry {}: {message}", index + 1))
                };
                let id = entry
                    .get("id")
                    .filter(|id| QuestionId::from_json(id).is_some())
                    .cloned()
                    .ok_or_else(|| bad("no `id`"))?;
                let asked = entry
                    .get("conversations")
                    .and_then(|c| c.get(0))
                    .and_then(|turn| turn.get("value"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("no first conversation turn"))?;
                let question = pytext::strip(&asked.replace("<image>", "")).to_owned();
                let image = entry
                    .get("image")
                    .and_then(Value::as_str)
                    .map(|image| QuestionImage::File(image.into()));
                let text = format!("{question}\n{OPTION_LETTER}");
                let prompt = if image.is_some() {
                    format!("<image>\n{text}")
                } else {
                    text.clone()
                };
                Ok(Question {
                    id,
                    image,
                    text,
                    prompt,
                    extra: serde_json::Map::new(),
                })
            })
            .collect()
    }

    fn max_new_tokens(&self) -> usize {
        1024
    }

    fn score(&self, inputs: &Inputs<'_>) -> Result<Outcome, BenchmarkError> {
        let dir = inputs.annotations(
            NAME,
            "ScienceQA's data directory with problems.json and pid_splits.json",
        )?;
        let problems = read_split(dir)?;
        let answers = inputs.answers;
        let split_path = dir.join("pid_splits.json");
        let ids: Vec<&QuestionId> = problems.iter().map(|p| &p.id).collect();
        let by_id =
            answers.one_per_question(&split_path, &ids, Some(format!("split `{SPLIT}`")))?;

        let (mut correct, mut image_total, mut image_correct, mut failed, mut out_of_range) =
            (0, 0, 0, 0, 0);
        for problem in &problems {
            let answer = by_id[&problem.id];
            let is_image = answers.prompt(answer)?.contains("<image>");
            if inputs.convention == Convention::LmmsEval {
                let right = lmms_eval_right(&answer.text, problem.answer);
                correct += usize::from(right);
                image_total += usize::from(is_image);
                image_correct += usize::from(right && is_image);
                continue;
            }
            let letter = read_letter(&answer.text);
            let index = match letter.as_deref() {
                None => {
                    failed += 1;
                    None
                }
                Some(letter) => match LETTERS[..problem.choices.min(LETTERS.len())]
                    .iter()
                    .position(|l| *l == letter)
                {
                    Some(index) => Some(index),
                    None => {
                        out_of_range += 1;
                        None
                    }
                },
            };
            let right = index == Some(problem.answer);
            correct += usize::from(right);
            image_total += usize::from(is_image);
            image_correct += usize::from(right && is_image);
        }
        if image_total == 0 {
            return Err(BenchmarkError::Unscorable {
                benchmark: NAME,
                reason: format!(
                    "no answer's prompt in {} contains <image>, so there is no IMG subset (LLaVA's \
                     model_vqa_science.py keeps it in the prompt)",
                    answers.path.display()
                ),
            });
        }
        let total = problems.len();
        let accuracy = percent(correct as f64, total as f64);
        let img_accuracy = percent(image_correct as f64, image_total as f64);
        let mut table = Table::new(["subset", "questions", "correct", "accuracy"]);
        table.row([
            "IMG".to_owned(),
            image_total.to_string(),
            image_correct.to_string(),
            two(img_accuracy),
        ]);
        table.row([
            "all".to_owned(),
            total.to_string(),
            correct.to_string(),
            two(accuracy),
        ]);
        let metrics = json!({
            "img_accuracy": img_accuracy,
            "accuracy": accuracy,
            "questions": total,
            "correct": correct,
            "img_questions": image_total,
            "img_correct": image_correct,
            "failed_to_parse": failed,
            "letter_beyond_choices": out_of_range,
        });
        Ok(Outcome::Score(Score {
            benchmark: NAME,
            convention: inputs.convention,
            score: img_accuracy,
            headline: "accuracy on the questions with an image, %",
            unit: "%",
            metrics: into_map(metrics),
            notes: Vec::new(),
            table,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lmms_eval_reads_letters_case_blind() {
        assert!(lmms_eval_right(" b ", 1));
        assert!(lmms_eval_right("B.", 1));
        assert!(lmms_eval_right("B. blue", 1));
        assert!(!lmms_eval_right("b. blue", 1));
        assert!(!lmms_eval_right("The answer is B.", 1));
    }

    #[test]
    fn letters_by_the_official_rule() {
        for (reply, letter) in [
            ("B", Some("B")),
            ("E", Some("E")),
            ("F", None),
            ("B. blue", Some("B")),
            ("B.", None),
            ("(C)", None),
            ("The answer is B.", Some("B")),
            ("The answer is Bx", Some("B")),
            ("The answer is F.", Some("F")),
            ("The answer is A. The answer is B.", None),
            ("b", None),
            ("", None),
            ("A. ", Some("A")),
        ] {
            assert_eq!(read_letter(reply).as_deref(), letter, "{reply:?}");
        }
    }
}
