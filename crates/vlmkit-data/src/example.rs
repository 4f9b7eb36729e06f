//! The training example shared by every data source.

use std::collections::BTreeMap;

use image::{GrayImage, RgbImage};
use serde::{Deserialize, Serialize};

/// Placeholder marking where the image's tokens go in the prompt (LLaVA convention).
pub const IMAGE_TOKEN: &str = "<image>";

/// Who speaks a turn; serialised with LLaVA's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Human,
    Gpt,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Human => "human",
            Role::Gpt => "gpt",
        }
    }

    /// Parses LLaVA's role names.
    pub fn from_name(name: &str) -> Option<Role> {
        match name {
            "human" => Some(Role::Human),
            "gpt" => Some(Role::Gpt),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One conversation turn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub from: Role,
    pub value: String,
}

impl Turn {
    pub fn human(value: impl Into<String>) -> Self {
        Turn {
            from: Role::Human,
            value: value.into(),
        }
    }

    pub fn gpt(value: impl Into<String>) -> Self {
        Turn {
            from: Role::Gpt,
            value: value.into(),
        }
    }
}

/// A decoded training example: an optional image, a conversation and grounding data.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub id: String,
    pub image: Option<RgbImage>,
    /// LLaVA conversation; with an image, the first human turn contains [`IMAGE_TOKEN`].
    pub turns: Vec<Turn>,
    /// Region mask at image resolution (255 = inside), for grounding losses.
    pub mask: Option<GrayImage>,
    /// Question family, e.g. `"color"`.
    pub family: Option<String>,
    /// Free-form annotations, e.g. `"pope" -> "adversarial"`, `"answer" -> "red"`.
    pub meta: BTreeMap<String, String>,
}

impl Example {
    /// A one-question example. With an image, the prompt is `"<image>\n{question}"`
    /// unless the question places `<image>` itself (one placeholder either way;
    /// the collator refuses a question with more, or one without an image).
    pub fn single_turn(
        id: impl Into<String>,
        image: Option<RgbImage>,
        question: &str,
        answer: impl Into<String>,
    ) -> Self {
        let prompt = if image.is_some() && !question.contains(IMAGE_TOKEN) {
            format!("{IMAGE_TOKEN}\n{question}")
        } else {
            question.to_owned()
        };
        Example {
            id: id.into(),
            image,
            turns: vec![Turn::human(prompt), Turn::gpt(answer)],
            mask: None,
            family: None,
            meta: BTreeMap::new(),
        }
    }

    /// The first human turn without the image placeholder (and the newline joining it
    /// to the text, whether it comes before or after).
    pub fn question(&self) -> Option<String> {
        let turn = self.turns.iter().find(|t| t.from == Role::Human)?;
        let text = turn
            .value
            .replace(&format!("{IMAGE_TOKEN}\n"), "")
            .replace(&format!("\n{IMAGE_TOKEN}"), "")
            .replace(IMAGE_TOKEN, "");
        Some(text.trim().to_owned())
    }

    /// The first gpt turn.
    pub fn answer(&self) -> Option<&str> {
        self.turns
            .iter()
            .find(|t| t.from == Role::Gpt)
            .map(|t| t.value.as_str())
    }
}

/// Why a conversation cannot go with its image (or lack of one), LLaVA's way:
/// at most one [`IMAGE_TOKEN`], in a human turn, and only with an image.
pub fn placeholder_problem(turns: &[Turn], has_image: bool) -> Option<String> {
    if let Some(turn) = turns
        .iter()
        .position(|t| t.from == Role::Gpt && t.value.contains(IMAGE_TOKEN))
    {
        return Some(format!("turn {turn} is an answer holding {IMAGE_TOKEN}"));
    }
    let count: usize = turns
        .iter()
        .map(|t| t.value.matches(IMAGE_TOKEN).count())
        .sum();
    match (has_image, count) {
        (true, 0 | 1) | (false, 0) => None,
        (false, _) => Some(format!(
            "the text has {IMAGE_TOKEN} but the record has no \"image\""
        )),
        (true, n) => Some(format!(
            "{n} {IMAGE_TOKEN} placeholders; one image per example is supported"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_serialise_with_llava_names() {
        assert_eq!(serde_json::to_string(&Role::Human).unwrap(), "\"human\"");
        assert_eq!(serde_json::to_string(&Role::Gpt).unwrap(), "\"gpt\"");
        let turn: Turn = serde_json::from_str(r#"{"from": "gpt", "value": "red"}"#).unwrap();
        assert_eq!(turn, Turn::gpt("red"));
        assert!(serde_json::from_str::<Role>("\"system\"").is_err());
        assert_eq!(Role::from_name("human"), Some(Role::Human));
        assert_eq!(Role::from_name("Human"), None);
    }

    #[test]
    fn question_strips_the_image_placeholder_on_either_side() {
        let example = Example::single_turn(
            "a",
            Some(RgbImage::new(1, 1)),
            "What color is the circle?",
            "red",
        );
        assert_eq!(example.turns[0].value, "<image>\nWhat color is the circle?");
        assert_eq!(
            example.question().as_deref(),
            Some("What color is the circle?")
        );
        assert_eq!(example.answer(), Some("red"));

        let mut suffix = example.clone();
        suffix.turns[0].value = "What color is the circle?\n<image>".to_owned();
        assert_eq!(
            suffix.question().as_deref(),
            Some("What color is the circle?")
        );
    }

    #[test]
    fn a_question_that_places_the_image_keeps_its_placeholders() {
        let image = Some(RgbImage::new(1, 1));
        let placed = Example::single_turn("p", image.clone(), "Is <image> red?", "yes");
        assert_eq!(placed.turns[0].value, "Is <image> red?");
        // Two stay two (and are refused as such), not three.
        let twice = Example::single_turn("t", image, "<image> <image> what?", "");
        assert_eq!(
            placeholder_problem(&twice.turns, true).as_deref(),
            Some("2 <image> placeholders; one image per example is supported")
        );
    }

    #[test]
    fn text_only_examples_have_no_placeholder() {
        let example = Example::single_turn("t", None, "Say hi.", "hi");
        assert_eq!(example.turns[0].value, "Say hi.");
        assert_eq!(example.question().as_deref(), Some("Say hi."));
    }

    #[test]
    fn missing_turns_give_none() {
        let mut example = Example::single_turn("x", None, "q", "a");
        example.turns.retain(|t| t.from == Role::Human);
        assert_eq!(example.answer(), None);
        example.turns.clear();
        assert_eq!(example.question(), None);
    }
}
