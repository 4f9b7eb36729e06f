//! Reading the files benchmarks come in: LLaVA's answer files, JSON-lines question
//! files, JSON release files. Errors name the file and line.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::BenchmarkError;

/// A question's id as a file gives it: LLaVA's files use integers (POPE, SEED,
/// MMBench) and strings (GQA, ScienceQA, MME). An integer and the string of its
/// digits are the same id, so a file written by another tool still joins.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct QuestionId(String);

impl QuestionId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id a JSON value gives, `None` for anything but an integer or a string.
    pub fn from_json(value: &Value) -> Option<Self> {
        match value {
            Value::String(s) => Some(Self(s.clone())),
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(Self(n.to_string())),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QuestionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One line of an answers file in LLaVA's format (`model_vqa_loader.py`'s
/// output): `question_id`, `prompt`, `text`; `answer_id`, `model_id` and
/// `metadata` are ignored, other fields kept in `extra`.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub question_id: QuestionId,
    /// The question as asked, without the image token LLaVA prepends (ScienceQA's
    /// file keeps it: that is how its scorer tells image questions).
    pub prompt: Option<String>,
    /// The reply.
    pub text: String,
    /// 1-based line in the answers file.
    pub line: usize,
    pub extra: Map<String, Value>,
}

/// An answers file, in file order: several scorers depend on the order.
#[derive(Clone, Debug)]
pub struct AnswerFile {
    pub path: PathBuf,
    pub answers: Vec<Answer>,
}

impl AnswerFile {
    /// Reads a JSON-lines answers file. Blank lines are allowed; a line that is
    /// not an object with a `question_id` and a string `text` is refused.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, BenchmarkError> {
        let path = path.as_ref();
        let answers = read_json_lines(path)?
            .into_iter()
            .map(|(line, mut object)| {
                let question_id = take_id(&mut object, "question_id", path, line)?;
                let text = match object.remove("text") {
                    Some(Value::String(text)) => text,
                    Some(other) => {
                        return Err(BenchmarkError::format(
                            path,
                            Some(line),
                            format!("`text` must be a string, not {other}"),
                        ))
                    }
                    None => {
                        return Err(BenchmarkError::format(
                            path,
                            Some(line),
                            "no `text` (the reply)",
                        ))
                    }
                };
                let prompt = match object.remove("prompt") {
                    Some(Value::String(prompt)) => Some(prompt),
                    None | Some(Value::Null) => None,
                    Some(other) => {
                        return Err(BenchmarkError::format(
                            path,
                            Some(line),
                            format!("`prompt` must be a string, not {other}"),
                        ))
                    }
                };
                for ignored in ["answer_id", "model_id", "metadata"] {
                    object.remove(ignored);
                }
                Ok(Answer {
                    question_id,
                    prompt,
                    text,
                    line,
                    extra: object,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            path: path.to_owned(),
            answers,
        })
    }

    /// The answers by question id; a second answer for an id is refused.
    pub fn by_id(&self) -> Result<HashMap<&QuestionId, &Answer>, BenchmarkError> {
        let mut by_id: HashMap<&QuestionId, &Answer> = HashMap::with_capacity(self.answers.len());
        for answer in &self.answers {
            if let Some(first) = by_id.insert(&answer.question_id, answer) {
                return Err(BenchmarkError::DuplicateAnswer {
                    id: answer.question_id.clone(),
                    path: self.path.clone(),
                    first_line: first.line,
                    line: answer.line,
                });
            }
        }
        Ok(by_id)
    }

    /// The answer's prompt, or an error naming its line.
    pub(crate) fn prompt<'a>(&self, answer: &'a Answer) -> Result<&'a str, BenchmarkError> {
        answer.prompt.as_deref().ok_or_else(|| {
            BenchmarkError::format(
                &self.path,
                Some(answer.line),
                format!(
                    "question {}: no `prompt`, which this benchmark reads",
                    answer.question_id
                ),
            )
        })
    }

    /// The answers by question id when they answer `ids` (the questions of
    /// `questions`, in its order) one each: a second answer, an answer to a
    /// question not among them (`scope` says which part of the file was
    /// searched) and a question without an answer are refused.
    pub(crate) fn one_per_question(
        &self,
        questions: &Path,
        ids: &[&QuestionId],
        scope: Option<String>,
    ) -> Result<HashMap<&QuestionId, &Answer>, BenchmarkError> {
        let by_id = self.by_id()?;
        let known: std::collections::HashSet<&QuestionId> = ids.iter().copied().collect();
        if let Some(answer) = self
            .answers
            .iter()
            .find(|a| !known.contains(&a.question_id))
        {
            return Err(self.unknown(answer, questions, scope));
        }
        self.check_missing(
            questions,
            ids.iter().copied().filter(|id| !by_id.contains_key(id)),
        )?;
        Ok(by_id)
    }

    pub(crate) fn unknown(
        &self,
        answer: &Answer,
        questions: &Path,
        scope: Option<String>,
    ) -> BenchmarkError {
        BenchmarkError::UnknownQuestion {
            id: answer.question_id.clone(),
            answers: self.path.clone(),
            line: answer.line,
            questions: questions.to_owned(),
            scope,
        }
    }

    /// An error for the questions of `questions` that have no answer (`missing`
    /// in the questions' order), or `Ok` when there are none.
    pub(crate) fn check_missing<'a>(
        &self,
        questions: &Path,
        mut missing: impl Iterator<Item = &'a QuestionId>,
    ) -> Result<(), BenchmarkError> {
        match missing.next() {
            None => Ok(()),
            Some(first) => Err(BenchmarkError::MissingAnswers {
                first: first.clone(),
                count: 1 + missing.count(),
                answers: self.path.clone(),
                questions: questions.to_owned(),
            }),
        }
    }
}

/// A JSON object's entries in file order (Python's `json.load` keeps it, and
/// the official scripts' float sums and random draws follow it).
pub(crate) struct Ordered(pub Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(Ordered(entries))
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

/// Reads `path` whole.
pub(crate) fn read_text(path: &Path) -> Result<String, BenchmarkError> {
    std::fs::read_to_string(path).map_err(|e| BenchmarkError::io(path, e))
}

/// Parses a JSON file.
pub(crate) fn read_json(path: &Path) -> Result<Value, BenchmarkError> {
    let text = read_text(path)?;
    serde_json::from_str(&text)
        .map_err(|e| BenchmarkError::format(path, Some(e.line()), e.to_string()))
}

/// A JSON-lines file's object with its 1-based line.
pub(crate) type Line = (usize, Map<String, Value>);

/// Parses a JSON-lines file of objects, blank lines skipped.
pub(crate) fn read_json_lines(path: &Path) -> Result<Vec<Line>, BenchmarkError> {
    let text = read_text(path)?;
    let mut objects = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(object)) => objects.push((index + 1, object)),
            Ok(other) => {
                return Err(BenchmarkError::format(
                    path,
                    Some(index + 1),
                    format!("expected a JSON object, found {}", kind(&other)),
                ))
            }
            Err(e) => {
                return Err(BenchmarkError::format(
                    path,
                    Some(index + 1),
                    format!("not JSON: {e}"),
                ))
            }
        }
    }
    Ok(objects)
}

/// Removes `key` from `object` as a question id.
pub(crate) fn take_id(
    object: &mut Map<String, Value>,
    key: &str,
    path: &Path,
    line: usize,
) -> Result<QuestionId, BenchmarkError> {
    match object.remove(key) {
        Some(value) => QuestionId::from_json(&value).ok_or_else(|| {
            BenchmarkError::format(
                path,
                Some(line),
                format!("`{key}` must be a string or an integer, not {value}"),
            )
        }),
        None => Err(BenchmarkError::format(
            path,
            Some(line),
            format!("no `{key}`"),
        )),
    }
}

/// The `question_id` of entry `index` (0-based) of a release file's list.
pub(crate) fn entry_id(
    entry: &Value,
    path: &Path,
    index: usize,
) -> Result<QuestionId, BenchmarkError> {
    entry
        .get("question_id")
        .and_then(QuestionId::from_json)
        .ok_or_else(|| {
            BenchmarkError::format(
                path,
                None,
                format!("entry {} has no `question_id`", index + 1),
            )
        })
}

/// An error about question `id` of a release file.
pub(crate) fn bad_entry<'a>(
    path: &'a Path,
    id: &'a QuestionId,
) -> impl Fn(&str) -> BenchmarkError + 'a {
    move |message| BenchmarkError::BadEntry {
        path: path.to_owned(),
        id: id.clone(),
        message: message.to_owned(),
    }
}

/// A JSON value's kind, for messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
