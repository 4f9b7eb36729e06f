//! An answered question, and how a generated reply is matched with its answer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One answered question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub id: String,
    pub family: String,
    /// The example's metadata that scorers read ([`crate::Scorer::tags`]), e.g.
    /// `pope`: the POPE sampler of an existence question. Written as keys of
    /// their own, so a file written before tags were generic reads the same.
    #[serde(flatten)]
    pub tags: BTreeMap<String, String>,
    pub question: String,
    /// For multiple-choice questions, the answers offered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    pub answer: String,
    pub prediction: String,
    /// The answer read from a reply in sentences ([`AnswerMatch::Relaxed`]):
    /// `yes`/`no`, or the one option it names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<String>,
    pub correct: bool,
    /// Why the model was not asked (its prompt does not fit the model's
    /// positions): the question counts as wrong, as it stays in the benchmark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unanswered: Option<String>,
}

/// How a generated reply is matched with the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnswerMatch {
    /// The whole reply, normalised, equals the answer: the recipes' models
    /// answer in a word or phrase.
    #[default]
    Exact,
    /// For replies in sentences (a pretrained chat model's): yes/no by POPE's
    /// rule (a "no" or "not" anywhere means no), a choice by the one option the
    /// reply names, an open answer when it occurs in the reply as whole words.
    Relaxed,
}

impl AnswerMatch {
    /// Whether `reply` gives `answer` to a question offering `options` (empty for
    /// open questions), and the answer read from the reply where there is one.
    pub fn judge(self, answer: &str, reply: &str, options: &[String]) -> (bool, Option<String>) {
        let answer = normalize_answer(answer);
        let reply = normalize_answer(reply);
        if self == AnswerMatch::Exact {
            return (answer == reply, None);
        }
        let words: Vec<&str> = reply.split(' ').collect();
        let names = |phrase: &str| {
            let phrase: Vec<&str> = phrase.split(' ').collect();
            words.windows(phrase.len()).any(|w| w == phrase.as_slice())
        };
        if answer == "yes" || answer == "no" {
            let read = if words.iter().any(|w| *w == "no" || *w == "not") {
                "no"
            } else {
                "yes"
            };
            return (read == answer, Some(read.to_string()));
        }
        if options.is_empty() {
            return (names(&answer), None);
        }
        let named: Vec<String> = options
            .iter()
            .map(|o| normalize_answer(o))
            .filter(|o| names(o))
            .collect();
        match named.as_slice() {
            [one] => (*one == answer, Some(one.clone())),
            _ => (false, None),
        }
    }
}

impl Prediction {
    /// The names of its own fields, which no tag may take.
    pub const FIELDS: &'static [&'static str] = &[
        "id",
        "family",
        "question",
        "options",
        "answer",
        "prediction",
        "read",
        "correct",
        "unanswered",
    ];

    /// Tag `name`, when the question carries it.
    pub fn tag(&self, name: &str) -> Option<&str> {
        self.tags.get(name).map(String::as_str)
    }
}

/// Lowercase, punctuation and surrounding spaces removed, inner spaces collapsed.
pub fn normalize_answer(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() {
                c
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
