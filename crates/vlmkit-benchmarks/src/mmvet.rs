//! MM-Vet. Its score comes from a GPT-4 judge (the official evaluator), which
//! vlmkit does not imitate: this writes the `{"v1_<id>": reply}` file the
//! evaluator takes (`scripts/convert_mmvet_for_eval.py`) and computes no score.
//! With `--annotations mm-vet.json` the answers are checked against its
//! questions first: every one answered, none unknown.

use serde_json::{Map, Value};

use crate::files::read_json;
use crate::{Benchmark, BenchmarkError, Inputs, LmmsEval, Outcome, QuestionId, Submission};

pub(crate) struct MmVet;

const NAME: &str = "mmvet";

impl Benchmark for MmVet {
    fn name(&self) -> &'static str {
        NAME
    }

    fn column(&self) -> &'static str {
        "MM-Vet"
    }

    fn inputs_help(&self) -> &'static str {
        "--annotations (optional): MM-Vet's mm-vet.json, to check that every question is answered"
    }

    fn lmms_eval(&self) -> LmmsEval {
        LmmsEval::Unavailable(
            "lmms-eval scores MM-Vet with a GPT judge too; no rule-based score exists",
        )
    }

    fn score(&self, inputs: &Inputs<'_>) -> Result<Outcome, BenchmarkError> {
        let answers = inputs.answers;
        match inputs.annotations {
            // Without MM-Vet's questions, a second answer to one is still refused.
            None => {
                answers.by_id()?;
            }
            Some(path) => {
                let file = read_json(path)?;
                let questions = file.as_object().ok_or_else(|| {
                    BenchmarkError::format(
                        path,
                        None,
                        "expected MM-Vet's object of questions by `v1_<id>`",
                    )
                })?;
                let ids: Vec<QuestionId> = questions
                    .keys()
                    .map(|key| QuestionId::new(key.strip_prefix("v1_").unwrap_or(key)))
                    .collect();
                answers.one_per_question(path, &ids.iter().collect::<Vec<_>>(), None)?;
            }
        }
        let results: Map<String, Value> = answers
            .answers
            .iter()
            .map(|a| {
                (
                    format!("v1_{}", a.question_id),
                    Value::String(a.text.clone()),
                )
            })
            .collect();
        Ok(Outcome::Submission(Submission {
            benchmark: NAME,
            file_name: crate::submission_name(answers, "json"),
            contents: serde_json::to_vec_pretty(&results).expect("serialises"),
            entries: results.len(),
            server:
                "MM-Vet's official evaluator (a GPT-4 judge): https://github.com/yuweihao/MM-Vet",
            notes: vec!["MM-Vet needs a GPT judge: no score is computed here".into()],
        }))
    }
}
