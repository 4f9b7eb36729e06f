//! Benchmarks' question files as LLaVA-1.5's inference scripts read them, and
//! the answer lines those scripts write: what `vlmkit eval --benchmark` asks a
//! model and writes back.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::files::read_json_lines;
use crate::{BenchmarkError, QuestionId};

/// LLaVA's short-answer instruction, which its question files append.
pub const SHORT_ANSWER: &str = "Answer the question using a single word or phrase.";
/// LLaVA's multiple-choice instruction (`--single-pred-prompt`).
pub const OPTION_LETTER: &str = "Answer with the option's letter from the given choices directly.";

/// Where a question's image is.
#[derive(Clone, Debug, PartialEq)]
pub enum QuestionImage {
    /// A path relative to the benchmark's image directory (`--images`).
    File(PathBuf),
    /// The encoded image itself (MMBench's TSV carries base64 images).
    Encoded(Vec<u8>),
}

/// One question as LLaVA's inference script asks it.
#[derive(Clone, Debug, PartialEq)]
pub struct Question {
    /// The id as the file gives it, written back unchanged.
    pub id: Value,
    pub image: Option<QuestionImage>,
    /// What the model is asked after the image, in the recipe's conversation template.
    pub text: String,
    /// The answer line's `prompt` (what LLaVA's script records as asked).
    pub prompt: String,
    /// Fields the answer line carries beside `question_id`, `prompt` and `text`
    /// (MMBench's `round_id`, `options`, `option_char`; MMMU's `options`).
    pub extra: Map<String, Value>,
}

impl Question {
    /// The id, for messages and joins.
    pub fn question_id(&self) -> QuestionId {
        QuestionId::from_json(&self.id).unwrap_or_else(|| QuestionId::new(self.id.to_string()))
    }

    /// The line LLaVA's script writes for `reply` (`answer_id` is the
    /// question's position, where LLaVA writes a random uuid).
    pub fn answer_line(&self, reply: &str, model_id: &str, position: usize) -> Value {
        let mut line = json!({
            "question_id": self.id,
            "prompt": self.prompt,
            "text": reply,
            "answer_id": format!("vlmkit-{position}"),
            "model_id": model_id,
            "metadata": {},
        });
        if let Value::Object(map) = &mut line {
            for (key, value) in &self.extra {
                map.insert(key.clone(), value.clone());
            }
        }
        line
    }
}

/// LLaVA's JSON-lines question file (`model_vqa_loader.py`): `question_id`,
/// `image`, `text` (the question with its benchmark's instruction); the
/// recorded prompt is `text`. An `options` list is carried to the answer.
pub fn read_llava_jsonl(path: &Path) -> Result<Vec<Question>, BenchmarkError> {
    read_json_lines(path)?
        .into_iter()
        .map(|(line, object)| {
            let id = object
                .get("question_id")
                .filter(|id| QuestionId::from_json(id).is_some())
                .cloned()
                .ok_or_else(|| {
                    BenchmarkError::format(
                        path,
                        Some(line),
                        "no `question_id` (a string or an integer)",
                    )
                })?;
            let text = object.get("text").and_then(Value::as_str).ok_or_else(|| {
                BenchmarkError::format(path, Some(line), "no string `text` (the question)")
            })?;
            let image = match object.get("image") {
                None | Some(Value::Null) => None,
                Some(Value::String(image)) => Some(QuestionImage::File(PathBuf::from(image))),
                Some(other) => {
                    return Err(BenchmarkError::format(
                        path,
                        Some(line),
                        format!("`image` must be a path, not {other}"),
                    ))
                }
            };
            let mut extra = Map::new();
            if let Some(options) = object.get("options") {
                extra.insert("options".into(), options.clone());
            }
            Ok(Question {
                id,
                image,
                text: text.to_owned(),
                prompt: text.to_owned(),
                extra,
            })
        })
        .collect()
}
