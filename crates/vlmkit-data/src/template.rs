//! Chat templates: how a conversation becomes the text a language model reads, and
//! which parts of it are trained on (the answers, with their end-of-turn token).

use crate::error::DataError;
use crate::example::{Role, Turn};

/// LLaVA-1.5's system prompt: `conv_vicuna_v1`, which its fine-tuning uses
/// (`--version v1`), says "user" (`conv_vicuna_v0` says "human").
pub const LLAVA_SYSTEM: &str =
    "A chat between a curious user and an artificial intelligence assistant. \
The assistant gives helpful, detailed, and polite answers to the user's questions.";

/// A piece of rendered text and whether its tokens are supervised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub text: String,
    pub supervised: bool,
}

impl Segment {
    fn context(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            supervised: false,
        }
    }

    fn answer(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            supervised: true,
        }
    }
}

/// The chat formats vlmkit knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    /// LLaVA-1.5 / Vicuna v1: `{system} USER: {q} ASSISTANT: {a}</s>USER: …`.
    VicunaV1 { system: String },
    /// ChatML (Qwen2, SmolLM): `<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n`.
    ChatMl { system: String },
    /// LLaVA's pretraining (`conv_llava_plain`, `preprocess_plain`): the image,
    /// then the caption and `\n`; the question's text is dropped and only the
    /// caption is supervised. One question and one answer per example.
    Plain,
}

/// Template names accepted in recipes.
pub const TEMPLATE_NAMES: &[&str] = &["vicuna_v1", "chatml", "plain"];

impl ChatTemplate {
    /// The template called `name`, with `system` replacing its default system prompt.
    pub fn from_name(name: &str, system: Option<&str>) -> Result<Self, DataError> {
        match name {
            "vicuna_v1" => Ok(Self::VicunaV1 {
                system: system.unwrap_or(LLAVA_SYSTEM).to_string(),
            }),
            "chatml" => Ok(Self::ChatMl {
                system: system.unwrap_or("").to_string(),
            }),
            "plain" => Ok(Self::Plain),
            other => Err(DataError::Template(format!(
                "unknown chat template `{other}` (known: {})",
                TEMPLATE_NAMES.join(", ")
            ))),
        }
    }

    /// The whole conversation; answers supervised.
    pub fn render(&self, turns: &[Turn]) -> Result<Vec<Segment>, DataError> {
        self.render_inner(turns, false)
    }

    /// The first question, up to where the answer starts (for generation).
    pub fn prompt(&self, turns: &[Turn]) -> Result<Vec<Segment>, DataError> {
        self.render_inner(turns, true)
    }

    fn render_inner(&self, turns: &[Turn], prompt_only: bool) -> Result<Vec<Segment>, DataError> {
        if let Self::Plain = self {
            return render_plain(turns, prompt_only);
        }
        let mut out = Vec::new();
        match self {
            Self::VicunaV1 { system } if !system.is_empty() => {
                out.push(Segment::context(format!("{system} ")))
            }
            Self::ChatMl { system } if !system.is_empty() => out.push(Segment::context(format!(
                "<|im_start|>system\n{system}<|im_end|>\n"
            ))),
            _ => {}
        }
        let mut expect = Role::Human;
        for (i, turn) in turns.iter().enumerate() {
            if turn.from != expect {
                return Err(DataError::Template(format!(
                    "turn {i} is from {:?} but a {:?} turn was expected (conversations alternate, starting with the human)",
                    turn.from.as_str(),
                    expect.as_str()
                )));
            }
            match (self, turn.from) {
                (Self::VicunaV1 { .. }, Role::Human) => {
                    out.push(Segment::context(format!("USER: {} ASSISTANT:", turn.value)))
                }
                (Self::VicunaV1 { .. }, Role::Gpt) => {
                    out.push(Segment::answer(format!(" {}</s>", turn.value)))
                }
                (Self::ChatMl { .. }, Role::Human) => out.push(Segment::context(format!(
                    "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
                    turn.value
                ))),
                (Self::ChatMl { .. }, Role::Gpt) => {
                    out.push(Segment::answer(format!("{}<|im_end|>", turn.value)));
                    out.push(Segment::context("\n"));
                }
                (Self::Plain, _) => unreachable!("rendered by render_plain"),
            }
            if prompt_only && turn.from == Role::Human {
                return Ok(out);
            }
            expect = match expect {
                Role::Human => Role::Gpt,
                Role::Gpt => Role::Human,
            };
        }
        if prompt_only {
            return Err(DataError::Template(
                "the conversation has no question".into(),
            ));
        }
        Ok(out)
    }
}

/// The Jinja macro that reads a message's text whether its content is a string
/// or transformers' list of parts (each image part becomes `<image>\n` ahead of
/// the text, as LLaVA prompts place it).
const JINJA_TEXT: &str = r#"{%- macro text(message) -%}
{%- if message['content'] is string -%}{{ message['content'] }}
{%- else -%}
{%- for part in message['content'] if part['type'] == 'image' -%}{{ '<image>\n' }}{%- endfor -%}
{%- for part in message['content'] if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
"#;

impl ChatTemplate {
    /// The same format as a Hugging Face `chat_template` (Jinja), for exported
    /// models: rendering a conversation gives the text [`ChatTemplate::render`]
    /// gives (and [`ChatTemplate::prompt`] for one question). A leading `system`
    /// message replaces the default system prompt.
    pub fn jinja(&self) -> String {
        let quoted = |s: &str| serde_json::to_string(s).expect("a string serialises");
        let system = |default: &str| {
            format!(
                "{{%- set system = text(messages[0]) if messages[0]['role'] == 'system' else {} -%}}\n",
                quoted(default)
            )
        };
        let body = match self {
            Self::VicunaV1 { system: default } => {
                system(default)
                    + r#"{%- if system -%}{{ system ~ ' ' }}{%- endif -%}
{%- for message in messages if message['role'] != 'system' -%}
{%- if message['role'] == 'user' -%}{{ 'USER: ' ~ text(message) ~ ' ASSISTANT:' }}
{%- else -%}{{ ' ' ~ text(message) ~ '</s>' }}{%- endif -%}
{%- endfor -%}
"#
            }
            Self::ChatMl { system: default } => {
                system(default)
                    + r#"{%- if system -%}{{ '<|im_start|>system\n' ~ system ~ '<|im_end|>\n' }}{%- endif -%}
{%- for message in messages if message['role'] != 'system' -%}
{%- if message['role'] == 'user' -%}{{ '<|im_start|>user\n' ~ text(message) ~ '<|im_end|>\n<|im_start|>assistant\n' }}
{%- else -%}{{ text(message) ~ '<|im_end|>\n' }}{%- endif -%}
{%- endfor -%}
"#
            }
            // The question's words are dropped; its image stays.
            Self::Plain => r#"{%- for message in messages -%}
{%- if message['role'] == 'user' -%}{{ '<image>' if '<image>' in text(message) else '' }}
{%- elif message['role'] == 'assistant' -%}{{ text(message) ~ '\n' }}{%- endif -%}
{%- endfor -%}
"#
            .to_string(),
        };
        format!("{JINJA_TEXT}{body}")
    }
}

/// LLaVA's `preprocess_plain`: `<image>` (the question's words dropped), then the
/// answer and the separator `\n`, supervised.
fn render_plain(turns: &[Turn], prompt_only: bool) -> Result<Vec<Segment>, DataError> {
    let [question, answer] = turns else {
        return Err(DataError::Template(format!(
            "the plain template takes one question and one answer (LLaVA's pretraining captions), got {} turns",
            turns.len()
        )));
    };
    if question.from != Role::Human || answer.from != Role::Gpt {
        return Err(DataError::Template(
            "the plain template takes a human question, then the answer".into(),
        ));
    }
    let image = if question.value.contains(crate::IMAGE_TOKEN) {
        crate::IMAGE_TOKEN
    } else {
        ""
    };
    let mut out = vec![Segment::context(image)];
    if !prompt_only {
        out.push(Segment::answer(format!("{}\n", answer.value)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_keeps_the_image_and_the_caption_only() {
        let plain = ChatTemplate::from_name("plain", None).unwrap();
        let turns = [
            Turn::human("Describe the image briefly.\n<image>"),
            Turn::gpt("a red circle"),
        ];
        assert_eq!(
            plain.render(&turns).unwrap(),
            [
                Segment::context("<image>"),
                Segment::answer("a red circle\n")
            ]
        );
        assert_eq!(plain.prompt(&turns).unwrap(), [Segment::context("<image>")]);
        let two = [
            Turn::human("<image>\nq"),
            Turn::gpt("a"),
            Turn::human("q"),
            Turn::gpt("a"),
        ];
        assert!(plain.render(&two).is_err());
    }

    #[test]
    fn the_default_system_prompt_is_conv_vicuna_v1s() {
        assert!(LLAVA_SYSTEM.starts_with("A chat between a curious user and"));
        assert!(LLAVA_SYSTEM.ends_with("polite answers to the user's questions."));
    }

    fn turns() -> Vec<Turn> {
        vec![
            Turn::human("<image>\nQ1"),
            Turn::gpt("A1"),
            Turn::human("Q2"),
            Turn::gpt("A2"),
        ]
    }

    fn join(segs: &[Segment]) -> String {
        segs.iter().map(|s| s.text.as_str()).collect()
    }

    #[test]
    fn vicuna_v1_matches_llava() {
        let t = ChatTemplate::from_name("vicuna_v1", Some("SYS")).unwrap();
        let segs = t.render(&turns()).unwrap();
        assert_eq!(
            join(&segs),
            "SYS USER: <image>\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT: A2</s>"
        );
        let supervised: Vec<&str> = segs
            .iter()
            .filter(|s| s.supervised)
            .map(|s| s.text.as_str())
            .collect();
        assert_eq!(supervised, [" A1</s>", " A2</s>"]);
        assert_eq!(
            join(&t.prompt(&turns()).unwrap()),
            "SYS USER: <image>\nQ1 ASSISTANT:"
        );
    }

    #[test]
    fn chatml_shape() {
        let t = ChatTemplate::from_name("chatml", None).unwrap();
        let text = join(&t.render(&turns()[..2]).unwrap());
        assert_eq!(
            text,
            "<|im_start|>user\n<image>\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
        );
    }

    #[test]
    fn refuses_unknown_names_and_broken_turn_order() {
        assert!(ChatTemplate::from_name("alpaca", None).is_err());
        let t = ChatTemplate::from_name("vicuna_v1", None).unwrap();
        let err = t.render(&[Turn::gpt("A")]).unwrap_err().to_string();
        assert!(err.contains("turn 0"), "{err}");
    }
}
