//! Tokenizers through the `tokenizers` crate: any Hugging Face `tokenizer.json`, or
//! the word-level tokenizer of the built-in data, built deterministically from its
//! vocabulary and saved in the same format (so a checkpoint carries its tokenizer).

use std::path::Path;
use std::str::FromStr;

use serde_json::json;

use crate::error::DataError;
use crate::example::IMAGE_TOKEN;

/// Special tokens of the built-in tokenizer, in id order.
pub const BUILTIN_SPECIALS: [&str; 5] = ["<pad>", "<unk>", "<s>", "</s>", IMAGE_TOKEN];

/// Words the chat templates add around the conversation.
const TEMPLATE_WORDS: [&str; 3] = ["user", "assistant", ":"];

/// A tokenizer with the ids the model needs to know.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    pub eos: u32,
    pub pad: u32,
    pub image: u32,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> DataError {
    DataError::Tokenizer(e.to_string())
}

impl TextTokenizer {
    /// The word-level tokenizer for `words` (lowercased words and punctuation, e.g.
    /// [`crate::shapes::vocabulary`]): specials first, then the template words, then
    /// `words` in order, duplicates dropped. Lowercases and splits on whitespace and
    /// punctuation; decodes with single spaces and punctuation attached.
    pub fn builtin(words: &[String]) -> Result<Self, DataError> {
        let mut vocab = serde_json::Map::new();
        let mut next = 0u32;
        let mut add = |w: &str, vocab: &mut serde_json::Map<String, serde_json::Value>| {
            if !vocab.contains_key(w) {
                vocab.insert(w.to_string(), json!(next));
                next += 1;
            }
        };
        for s in BUILTIN_SPECIALS {
            add(s, &mut vocab);
        }
        for w in TEMPLATE_WORDS
            .iter()
            .copied()
            .chain(words.iter().map(String::as_str))
        {
            add(&w.to_lowercase(), &mut vocab);
        }
        let added: Vec<_> = BUILTIN_SPECIALS
            .iter()
            .enumerate()
            .map(|(id, s)| {
                json!({"id": id, "content": s, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let doc = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "Lowercase"},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": null,
            "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
        });
        Self::from_json(&doc.to_string())
    }

    /// Loads a `tokenizer.json` (Hugging Face format).
    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|e| DataError::Tokenizer(format!("{}: {e}", path.display())))
    }

    /// Parses a `tokenizer.json` document. It must know an end-of-sequence token
    /// (`</s>`, `<|endoftext|>` or `<|im_end|>`); `<image>` is added as a special
    /// token when missing.
    pub fn from_json(text: &str) -> Result<Self, DataError> {
        let mut inner = tokenizers::Tokenizer::from_str(text).map_err(tok_err)?;
        if inner.token_to_id(IMAGE_TOKEN).is_none() {
            inner
                .add_special_tokens([tokenizers::AddedToken::from(IMAGE_TOKEN, true)])
                .map_err(tok_err)?;
        }
        let id = |t: &str| inner.token_to_id(t);
        let eos = ["</s>", "<|im_end|>", "<|endoftext|>"]
            .iter()
            .find_map(|t| id(t))
            .ok_or_else(|| {
                DataError::Tokenizer(
                    "no end-of-sequence token (</s>, <|im_end|> or <|endoftext|>)".into(),
                )
            })?;
        let bos = id("<s>");
        let pad = id("<pad>").or_else(|| id("<unk>")).unwrap_or(eos);
        let image =
            id(IMAGE_TOKEN).ok_or_else(|| DataError::Tokenizer("could not add <image>".into()))?;
        Ok(Self {
            inner,
            bos,
            eos,
            pad,
            image,
        })
    }

    /// The tokenizer as `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String, DataError> {
        self.inner.to_string(false).map_err(tok_err)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`, without BOS/EOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// Token ids of `text` with the byte range of `text` each one came from.
    pub fn encode_with_offsets(&self, text: &str) -> Result<Vec<(u32, usize, usize)>, DataError> {
        let encoding = self.inner.encode(text, false).map_err(tok_err)?;
        Ok(encoding
            .get_ids()
            .iter()
            .zip(encoding.get_offsets())
            .map(|(&id, &(start, end))| (id, start, end))
            .collect())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        self.inner.decode(ids, true).map_err(tok_err)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Whether every word of `text` is in the vocabulary (no unknown token).
    pub fn covers(&self, text: &str) -> Result<bool, DataError> {
        let unk = self.inner.token_to_id("<unk>");
        Ok(self.encode(text)?.iter().all(|&id| Some(id) != unk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::{vocabulary, ShapesConfig};

    fn builtin() -> TextTokenizer {
        TextTokenizer::builtin(&vocabulary(&ShapesConfig::default())).unwrap()
    }

    #[test]
    fn builtin_is_deterministic_and_round_trips_through_json() {
        let a = builtin();
        let b = builtin();
        assert_eq!(a.to_json().unwrap(), b.to_json().unwrap());
        let c = TextTokenizer::from_json(&a.to_json().unwrap()).unwrap();
        assert_eq!(c.vocab_size(), a.vocab_size());
        assert_eq!(
            c.encode("What color is the circle?").unwrap(),
            a.encode("What color is the circle?").unwrap()
        );
    }

    #[test]
    fn builtin_splits_lowercases_and_knows_specials() {
        let t = builtin();
        let ids = t.encode("<image>\nWhat color is the circle?").unwrap();
        assert_eq!(ids[0], t.image);
        assert_eq!(ids.len(), 7, "{ids:?}");
        assert!(t
            .covers("USER: What color is the circle? ASSISTANT: red")
            .unwrap());
        assert!(!t.covers("zebra").unwrap());
        assert_eq!(
            t.decode(&t.encode("There are 3 objects. A red circle.").unwrap())
                .unwrap(),
            "there are 3 objects. a red circle."
        );
        let with_eos = t.encode("red</s>").unwrap();
        assert_eq!(*with_eos.last().unwrap(), t.eos);
    }
}
