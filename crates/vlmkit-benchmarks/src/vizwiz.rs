//! VizWiz-VQA. The test split's labels are held by the EvalAI server (LLaVA-1.5's
//! published 50.0 is test-dev): for it this writes the file
//! `scripts/convert_vizwiz_for_submission.py` writes — `[{"image", "answer"}]` in
//! the test file's order, each answer through EvalAI's processor — and gives no
//! score. The val split (`val.json`, with ten human answers and `answerable`)
//! is scored here with the same processor and m4c's soft accuracy, overall and
//! for answerable and unanswerable questions apart.
//!
//! Answers are joined with the annotation list through LLaVA's question file
//! (`--questions`: `question_id` → `image`) where one is given, else by
//! `question_id` as the index into the list, as LLaVA's `llava_test.jsonl`
//! numbers them.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::files::{read_json, read_json_lines, take_id};
use crate::table::{two, Table};
use crate::vqa_accuracy::{process_answer, soft_accuracy};
use crate::{
    into_map, Answer, AnswerFile, Benchmark, BenchmarkError, Inputs, LmmsEval, Outcome, QuestionId,
    Score, Submission,
};

pub(crate) struct VizWiz;

const NAME: &str = "vizwiz";
const SERVER: &str =
    "EvalAI, VizWiz-VQA challenge (https://eval.ai/web/challenges/challenge-page/2185)";

struct Entry {
    image: String,
    /// `None` on the test split.
    answers: Option<Vec<String>>,
    answerable: Option<bool>,
}

fn read_entries(path: &Path) -> Result<Vec<Entry>, BenchmarkError> {
    let file = read_json(path)?;
    let list = file.as_array().ok_or_else(|| {
        BenchmarkError::format(
            path,
            None,
            "expected VizWiz's list of questions (val.json or test.json)",
        )
    })?;
    list.iter()
        .enumerate()
        .map(|(index, entry)| {
            let bad = |message: &str| BenchmarkError::BadEntry {
                path: path.to_owned(),
                id: QuestionId::new(index.to_string()),
                message: message.to_owned(),
            };
            let image = entry
                .get("image")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("no string `image`"))?;
            let answers = match entry.get("answers") {
                None => None,
                Some(Value::Array(list)) => Some(
                    list.iter()
                        .map(|a| {
                            a.get("answer")
                                .and_then(Value::as_str)
                                .map(str::to_owned)
                                .ok_or_else(|| bad("an entry of `answers` has no string `answer`"))
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                Some(_) => return Err(bad("`answers` is not a list")),
            };
            if answers.as_ref().is_some_and(|a| a.len() != 10) {
                return Err(bad("the soft accuracy needs 10 human answers"));
            }
            let answerable = entry
                .get("answerable")
                .and_then(|a| a.as_i64().map(|n| n != 0).or(a.as_bool()));
            Ok(Entry {
                image: image.to_owned(),
                answers,
                answerable,
            })
        })
        .collect()
}

/// Each answer's index into an annotation list of `len` entries keyed by
/// `key_of`, through LLaVA's question file when there is one, else by
/// `question_id` as the index. Unknown, duplicate and missing answers refused.
pub(crate) fn join_by_position<'a>(
    answers: &'a AnswerFile,
    annotations: &Path,
    keys: &[&str],
    questions: Option<&Path>,
) -> Result<Vec<&'a Answer>, BenchmarkError> {
    let by_id = answers.by_id()?;
    let index_of: HashMap<&str, usize> = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let mut joined: Vec<Option<&Answer>> = vec![None; keys.len()];
    let (question_images, source) = match questions {
        Some(path) => {
            let mut images = HashMap::new();
            for (line, mut object) in read_json_lines(path)? {
                let id = take_id(&mut object, "question_id", path, line)?;
                let image = object
                    .get("image")
                    .and_then(Value::as_str)
                    .ok_or_else(|| BenchmarkError::format(path, Some(line), "no string `image`"))?;
                images.insert(id, image.to_owned());
            }
            (Some(images), path)
        }
        None => (None, annotations),
    };
    for answer in &answers.answers {
        let index = match &question_images {
            Some(images) => images
                .get(&answer.question_id)
                .and_then(|image| index_of.get(image.as_str()).copied()),
            None => answer
                .question_id
                .as_str()
                .parse::<usize>()
                .ok()
                .filter(|i| *i < keys.len()),
        };
        let index = index.ok_or_else(|| answers.unknown(answer, source, None))?;
        if let Some(first) = joined[index].replace(by_id[&answer.question_id]) {
            return Err(BenchmarkError::BadEntry {
                path: answers.path.clone(),
                id: answer.question_id.clone(),
                message: format!(
                    "line {}: answers the same question ({}) as question {} on line {}",
                    answer.line, keys[index], first.question_id, first.line
                ),
            });
        }
    }
    let missing: Vec<QuestionId> = joined
        .iter()
        .enumerate()
        .filter(|(_, a)| a.is_none())
        .map(|(i, _)| QuestionId::new(keys[i]))
        .collect();
    answers.check_missing(annotations, missing.iter())?;
    Ok(joined.into_iter().map(|a| a.expect("checked")).collect())
}

impl Benchmark for VizWiz {
    fn name(&self) -> &'static str {
        NAME
    }

    fn column(&self) -> &'static str {
        "VizWiz"
    }

    fn inputs_help(&self) -> &'static str {
        "--annotations: VizWiz's val.json (scored here) or test.json (a submission file for the server); \
         --questions (optional): LLaVA's question file, to join answers by image"
    }

    fn lmms_eval(&self) -> LmmsEval {
        LmmsEval::Own
    }

    fn score(&self, inputs: &Inputs<'_>) -> Result<Outcome, BenchmarkError> {
        let path = inputs.annotations(NAME, "VizWiz's val.json or test.json")?;
        let entries = read_entries(path)?;
        let images: Vec<&str> = entries.iter().map(|e| e.image.as_str()).collect();
        let joined = join_by_position(inputs.answers, path, &images, inputs.questions)?;
        if entries.iter().all(|e| e.answers.is_none()) {
            let upload: Vec<Value> = entries
                .iter()
                .zip(&joined)
                .map(|(entry, answer)| json!({"image": entry.image, "answer": process_answer(&answer.text)}))
                .collect();
            return Ok(Outcome::Submission(Submission {
                benchmark: NAME,
                file_name: crate::submission_name(inputs.answers, "json"),
                contents: serde_json::to_vec(&upload).expect("serialises"),
                entries: upload.len(),
                server: SERVER,
                notes: vec![
                    "the test split's answers are scored by the server; no score is computed here"
                        .into(),
                ],
            }));
        }
        let (mut sums, mut counts) = ([0.0f64; 3], [0usize; 3]);
        for (entry, answer) in entries.iter().zip(&joined) {
            let human = entry
                .answers
                .as_ref()
                .ok_or_else(|| BenchmarkError::BadEntry {
                    path: path.to_owned(),
                    id: answer.question_id.clone(),
                    message: "no `answers`, where the other entries have them".into(),
                })?;
            let score = soft_accuracy(&answer.text, human, inputs.convention);
            let group = match entry.answerable {
                Some(true) => 1,
                Some(false) => 2,
                None => 0,
            };
            sums[0] += score;
            counts[0] += 1;
            if group > 0 {
                sums[group] += score;
                counts[group] += 1;
            }
        }
        let accuracy = |g: usize| (counts[g] > 0).then(|| 100.0 * (sums[g] / counts[g] as f64));
        let mut table = Table::new(["questions", "count", "accuracy"]);
        for (g, name) in ["all", "answerable", "unanswerable"]
            .into_iter()
            .enumerate()
        {
            if let Some(a) = accuracy(g) {
                table.row([name.to_owned(), counts[g].to_string(), two(a)]);
            }
        }
        let all = accuracy(0).expect("a val split has entries");
        Ok(Outcome::Score(Score {
            benchmark: NAME,
            convention: inputs.convention,
            score: all,
            headline: "VQA soft accuracy on val (10 choose 9, EvalAI processor), %",
            unit: "%",
            metrics: into_map(json!({
                "accuracy": all,
                "answerable_accuracy": accuracy(1),
                "unanswerable_accuracy": accuracy(2),
                "questions": counts[0],
            })),
            notes: vec![
                "val split: the papers' VizWiz numbers are test-dev, scored by the server".into(),
            ],
            table,
        }))
    }
}
