//! SEED-Bench (v1), as LLaVA-1.5 scores it (`scripts/convert_seed_for_submission.py`):
//! a reply is right when it *is* the answer letter (`row['text'] == answer`, no
//! parsing). The headline is accuracy on the image questions (LLaVA-1.5's
//! SEED-I); per question type beside it. Video questions are scored too when
//! the answers hold them (LLaVA answers them from one middle frame) — all of
//! them or none: answering part of the video questions is refused like any
//! other missing answer.
//!
//! lmms-eval (`seedbench`) strips the reply, keeps its first character when it
//! is longer than one, and compares case-insensitively.

use std::collections::{BTreeMap, HashSet};

use serde_json::{json, Map, Value};

use crate::files::{bad_entry, entry_id, read_json};
use crate::table::{two, Table};
use crate::{
    into_map, pytext, Benchmark, BenchmarkError, Convention, Inputs, LmmsEval, Outcome, QuestionId,
    Score,
};

pub(crate) struct SeedBench;

const NAME: &str = "seed";

struct Question {
    id: QuestionId,
    answer: String,
    type_id: i64,
    video: bool,
}

/// lmms-eval's reading: the stripped reply's first character, lower-cased.
fn lmms_eval_right(reply: &str, answer: &str) -> bool {
    let reply = pytext::lmms_eval_reply(reply);
    let reply = reply.as_str();
    let first: String = reply.chars().take(1).collect();
    let pred = if reply.chars().count() > 1 {
        first.as_str()
    } else {
        reply
    };
    pytext::strip(&pred.to_lowercase()) == pytext::strip(&answer.to_lowercase())
}

impl Benchmark for SeedBench {
    fn name(&self) -> &'static str {
        NAME
    }

    fn column(&self) -> &'static str {
        "SEED-I"
    }

    fn inputs_help(&self) -> &'static str {
        "--annotations: SEED-Bench.json (SEED-Bench-1)"
    }

    fn lmms_eval(&self) -> LmmsEval {
        LmmsEval::Own
    }

    fn score(&self, inputs: &Inputs<'_>) -> Result<Outcome, BenchmarkError> {
        let path = inputs.annotations(NAME, "SEED-Bench.json")?;
        let file = read_json(path)?;
        let list = file
            .get("questions")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                BenchmarkError::format(path, None, "no `questions` list (SEED-Bench.json)")
            })?;
        let type_names: BTreeMap<i64, String> = file
            .get("question_type")
            .and_then(Value::as_object)
            .map(|types| {
                types
                    .iter()
                    .filter_map(|(name, id)| Some((id.as_i64()?, name.clone())))
                    .collect()
            })
            .unwrap_or_default();
        let mut questions = Vec::with_capacity(list.len());
        for (index, q) in list.iter().enumerate() {
            let id = entry_id(q, path, index)?;
            let bad = bad_entry(path, &id);
            let answer = q
                .get("answer")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("no string `answer`"))?;
            let type_id = q
                .get("question_type_id")
                .and_then(Value::as_i64)
                .ok_or_else(|| bad("no integer `question_type_id`"))?;
            let data_type = q
                .get("data_type")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("no string `data_type`"))?;
            questions.push(Question {
                answer: answer.to_owned(),
                type_id,
                video: data_type != "image",
                id: id.clone(),
            });
        }
        let answers = inputs.answers;
        // The video questions are scored when any is answered: then all must be.
        let videos: HashSet<&QuestionId> = questions
            .iter()
            .filter(|q| q.video)
            .map(|q| &q.id)
            .collect();
        let videos_answered = answers
            .answers
            .iter()
            .any(|a| videos.contains(&a.question_id));
        let scored: Vec<&Question> = questions
            .iter()
            .filter(|q| !q.video || videos_answered)
            .collect();
        let ids: Vec<&QuestionId> = scored.iter().map(|q| &q.id).collect();
        let by_id = answers.one_per_question(path, &ids, None)?;

        // Per type: (correct, count); and per data type.
        let mut per_type: BTreeMap<i64, (usize, usize)> = BTreeMap::new();
        let mut per_data: [(usize, usize); 2] = [(0, 0); 2];
        for q in &scored {
            let reply = &by_id[&q.id].text;
            let right = match inputs.convention {
                Convention::Llava => *reply == q.answer,
                Convention::LmmsEval => lmms_eval_right(reply, &q.answer),
            };
            let slot = per_type.entry(q.type_id).or_default();
            slot.0 += usize::from(right);
            slot.1 += 1;
            let data = &mut per_data[usize::from(q.video)];
            data.0 += usize::from(right);
            data.1 += 1;
        }
        // The script's `correct / count * 100`.
        let accuracy = |(correct, count): (usize, usize)| correct as f64 / count as f64 * 100.0;
        if per_data[0].1 == 0 {
            return Err(BenchmarkError::Unscorable {
                benchmark: NAME,
                reason: format!("{} holds no image questions", path.display()),
            });
        }
        let image_accuracy = accuracy(per_data[0]);
        let mut table = Table::new(["question type", "questions", "accuracy"]);
        let mut types = Map::new();
        for (type_id, counts) in &per_type {
            let name = type_names
                .get(type_id)
                .cloned()
                .unwrap_or_else(|| format!("type {type_id}"));
            table.row([name.clone(), counts.1.to_string(), two(accuracy(*counts))]);
            types.insert(
                name,
                json!({"accuracy": accuracy(*counts), "questions": counts.1}),
            );
        }
        table.row([
            "image".to_owned(),
            per_data[0].1.to_string(),
            two(image_accuracy),
        ]);
        let mut notes = Vec::new();
        let (video_accuracy, total_accuracy) = if videos_answered {
            let total = (per_data[0].0 + per_data[1].0, per_data[0].1 + per_data[1].1);
            table.row([
                "video".to_owned(),
                per_data[1].1.to_string(),
                two(accuracy(per_data[1])),
            ]);
            table.row(["all".to_owned(), total.1.to_string(), two(accuracy(total))]);
            (Some(accuracy(per_data[1])), Some(accuracy(total)))
        } else {
            if questions.iter().any(|q| q.video) {
                notes.push("no video question answered: image questions only".to_owned());
            }
            (None, None)
        };
        Ok(Outcome::Score(Score {
            benchmark: NAME,
            convention: inputs.convention,
            score: image_accuracy,
            headline: "accuracy on the image questions, %",
            unit: "%",
            metrics: into_map(json!({
                "image_accuracy": image_accuracy,
                "video_accuracy": video_accuracy,
                "accuracy": total_accuracy,
                "image_questions": per_data[0].1,
                "per_question_type": types,
            })),
            notes,
            table,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lmms_eval_reads_the_first_character() {
        assert!(lmms_eval_right(" b. blue", "B"));
        assert!(lmms_eval_right("B", "B"));
        assert!(!lmms_eval_right("The answer is B", "B"));
        assert!(!lmms_eval_right("", "B"));
    }
}
