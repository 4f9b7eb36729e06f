//! VQAv2. test-dev (LLaVA-1.5-7B's published 78.5) is scored by the EvalAI
//! server: for the test split this writes `convert_vqav2_for_submission.py`'s
//! file — `[{"question_id", "answer"}]` over every test2015 question in the
//! file's order, each answer through EvalAI's processor, and `""` for a question
//! without one (test-dev is a subset of test2015: a test-dev run answers only
//! part, and that is how LLaVA submits it) — and gives no score. The val split
//! (`v2_mscoco_val2014_annotations.json`) is scored here with m4c's soft
//! accuracy over the ten answers, overall and per `answer_type`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use serde_json::{json, Value};

use crate::files::{bad_entry, entry_id, read_json, read_json_lines};
use crate::table::{two, Table};
use crate::vqa_accuracy::{process_answer, soft_accuracy};
use crate::{
    into_map, Benchmark, BenchmarkError, Inputs, LmmsEval, Outcome, QuestionId, Score, Submission,
};

pub(crate) struct VqaV2;

const NAME: &str = "vqav2";
const SERVER: &str = "EvalAI, VQA challenge (https://eval.ai/web/challenges/challenge-page/830)";

/// The test split's question ids, in file order, as the file spells them.
fn test_questions(path: &Path, file: Option<&Value>) -> Result<Vec<Value>, BenchmarkError> {
    let ids: Vec<Value> = match file {
        Some(file) => file
            .get("questions")
            .and_then(Value::as_array)
            .ok_or_else(|| BenchmarkError::format(path, None, "no `questions` list"))?
            .iter()
            .map(|q| q.get("question_id").cloned().unwrap_or(Value::Null))
            .collect(),
        None => read_json_lines(path)?
            .into_iter()
            .map(|(_, mut object)| object.remove("question_id").unwrap_or(Value::Null))
            .collect(),
    };
    if let Some(position) = ids
        .iter()
        .position(|id| QuestionId::from_json(id).is_none())
    {
        return Err(BenchmarkError::format(
            path,
            None,
            format!("question {} has no usable `question_id`", position + 1),
        ));
    }
    Ok(ids)
}

impl Benchmark for VqaV2 {
    fn name(&self) -> &'static str {
        NAME
    }

    fn column(&self) -> &'static str {
        "VQAv2"
    }

    fn inputs_help(&self) -> &'static str {
        "--annotations: v2_mscoco_val2014_annotations.json (scored here), or the test2015 questions \
         (v2_OpenEnded_mscoco_test2015_questions.json or LLaVA's llava_vqav2_mscoco_test2015.jsonl: a submission file)"
    }

    fn lmms_eval(&self) -> LmmsEval {
        LmmsEval::Unavailable(
            "lmms-eval's vqav2_val changed its answer normalisation in July and August 2025 (no word \
             tokenisation, human answers normalised too); vlmkit does not reproduce it",
        )
    }

    fn score(&self, inputs: &Inputs<'_>) -> Result<Outcome, BenchmarkError> {
        let path = inputs.annotations(NAME, "the val annotations or the test2015 question file")?;
        let answers = inputs.answers;
        let by_id = answers.by_id()?;
        let is_jsonl = path.extension().is_some_and(|e| e == "jsonl");
        let file = if is_jsonl {
            None
        } else {
            Some(read_json(path)?)
        };
        let Some(annotations) = file
            .as_ref()
            .and_then(|f| f.get("annotations"))
            .and_then(Value::as_array)
        else {
            let ids = test_questions(path, file.as_ref())?;
            let known: HashSet<QuestionId> = ids.iter().filter_map(QuestionId::from_json).collect();
            if let Some(answer) = answers
                .answers
                .iter()
                .find(|a| !known.contains(&a.question_id))
            {
                return Err(answers.unknown(answer, path, None));
            }
            let upload: Vec<Value> = ids
                .iter()
                .map(|id| {
                    let answer = QuestionId::from_json(id)
                        .and_then(|id| by_id.get(&id).map(|a| process_answer(&a.text)))
                        .unwrap_or_default();
                    json!({"question_id": id, "answer": answer})
                })
                .collect();
            let unanswered = ids.len() - by_id.len();
            return Ok(Outcome::Submission(Submission {
                benchmark: NAME,
                file_name: crate::submission_name(answers, "json"),
                contents: serde_json::to_vec(&upload).expect("serialises"),
                entries: upload.len(),
                server: SERVER,
                notes: vec![format!(
                    "{} of {} test2015 questions answered; the other {unanswered} are submitted as \"\" \
                     (LLaVA's convert_vqav2_for_submission.py does the same for a test-dev run)",
                    by_id.len(),
                    ids.len()
                )],
            }));
        };
        let mut human: HashMap<QuestionId, (Vec<String>, String)> =
            HashMap::with_capacity(annotations.len());
        let mut order = Vec::with_capacity(annotations.len());
        for (index, entry) in annotations.iter().enumerate() {
            let id = entry_id(entry, path, index)?;
            let bad = bad_entry(path, &id);
            let list = entry
                .get("answers")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("no `answers` list"))?;
            let texts = list
                .iter()
                .map(|a| a.get("answer").and_then(Value::as_str).map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("an entry of `answers` has no string `answer`"))?;
            if texts.len() != 10 {
                return Err(bad("the soft accuracy needs 10 human answers"));
            }
            let answer_type = entry
                .get("answer_type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            order.push(id.clone());
            human.insert(id.clone(), (texts, answer_type));
        }
        let by_id = answers.one_per_question(path, &order.iter().collect::<Vec<_>>(), None)?;
        let mut by_type: BTreeMap<String, (f64, usize)> = BTreeMap::new();
        let mut total = 0.0;
        for id in &order {
            let (texts, answer_type) = &human[id];
            let score = soft_accuracy(&by_id[id].text, texts, inputs.convention);
            total += score;
            let slot = by_type.entry(answer_type.clone()).or_default();
            slot.0 += score;
            slot.1 += 1;
        }
        let accuracy = 100.0 * (total / order.len() as f64);
        let mut table = Table::new(["answer type", "questions", "accuracy"]);
        let mut per_type = serde_json::Map::new();
        for (answer_type, (sum, count)) in &by_type {
            let a = 100.0 * (sum / *count as f64);
            table.row([answer_type.clone(), count.to_string(), two(a)]);
            per_type.insert(answer_type.clone(), json!(a));
        }
        table.row(["all".to_owned(), order.len().to_string(), two(accuracy)]);
        Ok(Outcome::Score(Score {
            benchmark: NAME,
            convention: inputs.convention,
            score: accuracy,
            headline: "VQA soft accuracy on val (10 choose 9, EvalAI processor), %",
            unit: "%",
            metrics: into_map(
                json!({"accuracy": accuracy, "per_answer_type": per_type, "questions": order.len()}),
            ),
            notes: vec![
                "val split: the papers' VQAv2 numbers are test-dev, scored by the server".into(),
            ],
            table,
        }))
    }
}
