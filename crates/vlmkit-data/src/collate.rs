//! Examples → token sequences with labels that supervise only the answers, and
//! images → normalised pixel arrays.

use std::sync::Arc;

use vlmkit_core::ops::IGNORE_INDEX;
use vlmkit_core::TokenSequence;

use crate::error::DataError;
use crate::example::{Example, Role, IMAGE_TOKEN};
use crate::template::{ChatTemplate, Segment};
use crate::tokenizer::TextTokenizer;

/// Turns examples into token sequences.
#[derive(Debug, Clone)]
pub struct Collator {
    pub tokenizer: Arc<TextTokenizer>,
    pub template: ChatTemplate,
    /// Longest text sequence kept (tokens beyond it are cut).
    pub max_text_len: usize,
}

impl Collator {
    /// The whole conversation, answers supervised.
    pub fn sequence(&self, example: &Example) -> Result<TokenSequence, DataError> {
        let turns = self.with_placeholder(example)?;
        let segments = self.template.render(&turns)?;
        self.tokenize(example, &segments)
    }

    /// The first question up to where its answer starts, nothing supervised.
    pub fn prompt(&self, example: &Example) -> Result<TokenSequence, DataError> {
        let turns = self.with_placeholder(example)?;
        let segments = self.template.prompt(&turns)?;
        self.tokenize(example, &segments)
    }

    /// LLaVA places `<image>` in the first human turn; add it when an example with an
    /// image lacks it, refuse a placeholder without an image.
    fn with_placeholder(&self, example: &Example) -> Result<Vec<crate::Turn>, DataError> {
        let mut turns = example.turns.clone();
        let count: usize = turns
            .iter()
            .map(|t| t.value.matches(IMAGE_TOKEN).count())
            .sum();
        match (example.image.is_some(), count) {
            (true, 0) => {
                if let Some(first) = turns.iter_mut().find(|t| t.from == Role::Human) {
                    first.value = format!("{IMAGE_TOKEN}\n{}", first.value);
                }
            }
            (true, 1) | (false, 0) => {}
            (false, _) => {
                return Err(DataError::Template(format!(
                    "example {}: the text has {IMAGE_TOKEN} but the example has no image",
                    example.id
                )))
            }
            (true, n) => {
                return Err(DataError::Template(format!(
                "example {}: {n} {IMAGE_TOKEN} placeholders; one image per example is supported",
                example.id
            )))
            }
        }
        Ok(turns)
    }

    fn tokenize(
        &self,
        example: &Example,
        segments: &[Segment],
    ) -> Result<TokenSequence, DataError> {
        let tok = &self.tokenizer;
        let mut ids = Vec::new();
        let mut labels = Vec::new();
        if let Some(bos) = tok.bos {
            ids.push(bos);
            labels.push(IGNORE_INDEX);
        }
        // The conversation is tokenised as one string, as LLaVA does: tokenising
        // the template's pieces one by one differs at their seams (SentencePiece
        // prepends `▁` to every piece). A token is supervised when it starts in
        // an answer.
        let text: String = segments.iter().map(|s| s.text.as_str()).collect();
        let mut ends = Vec::with_capacity(segments.len());
        let mut end = 0;
        for seg in segments {
            end += seg.text.len();
            ends.push((end, seg.supervised));
        }
        for (id, start, _) in tok.encode_with_offsets(&text)? {
            let supervised = ends
                .iter()
                .find(|(end, _)| start < *end)
                .is_some_and(|&(_, supervised)| supervised);
            ids.push(id);
            labels.push(if supervised { id as i64 } else { IGNORE_INDEX });
        }
        ids.truncate(self.max_text_len);
        labels.truncate(self.max_text_len);
        let image_at = ids.iter().position(|&id| id == tok.image);
        let (query, query_text) = match example.question() {
            Some(q) => (tok.encode(&q)?, q),
            None => (Vec::new(), String::new()),
        };
        Ok(TokenSequence {
            ids,
            labels,
            image_at,
            query,
            query_text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::{vocabulary, ShapesConfig, ShapesDataset, Split};

    fn collator() -> Collator {
        let tok = TextTokenizer::builtin(&vocabulary(&ShapesConfig::default())).unwrap();
        Collator {
            tokenizer: Arc::new(tok),
            template: ChatTemplate::from_name("vicuna_v1", Some("")).unwrap(),
            max_text_len: 512,
        }
    }

    #[test]
    fn only_answer_tokens_are_supervised() {
        let c = collator();
        let ds = ShapesDataset::new(ShapesConfig::default(), Split::Train).unwrap();
        let ex = ds.get(3).to_example();
        let seq = c.sequence(&ex).unwrap();
        let tok = &c.tokenizer;
        let supervised: Vec<u32> = seq
            .ids
            .iter()
            .zip(&seq.labels)
            .filter(|(_, &l)| l != IGNORE_INDEX)
            .map(|(&id, _)| id)
            .collect();
        let mut expected = tok.encode(ex.answer().unwrap()).unwrap();
        expected.push(tok.eos);
        assert_eq!(supervised, expected);
        assert_eq!(seq.ids[seq.image_at.unwrap()], tok.image);
        assert_eq!(seq.query, tok.encode(&ex.question().unwrap()).unwrap());
        assert_eq!(seq.ids[0], tok.bos.unwrap());
        // The prompt is the sequence up to the answer.
        let prompt = c.prompt(&ex).unwrap();
        assert_eq!(&seq.ids[..prompt.ids.len()], &prompt.ids[..]);
        assert_eq!(prompt.supervised(), 0);
    }

    /// Ids and labels from tokenising each template piece on its own.
    fn piecewise(c: &Collator, ex: &Example) -> (Vec<u32>, Vec<i64>) {
        let turns = c.with_placeholder(ex).unwrap();
        let mut ids: Vec<u32> = c.tokenizer.bos.into_iter().collect();
        let mut labels = vec![IGNORE_INDEX; ids.len()];
        for seg in c.template.render(&turns).unwrap() {
            for id in c.tokenizer.encode(&seg.text).unwrap() {
                ids.push(id);
                labels.push(if seg.supervised {
                    id as i64
                } else {
                    IGNORE_INDEX
                });
            }
        }
        (ids, labels)
    }

    #[test]
    fn word_level_tokens_are_the_same_whole_or_piece_by_piece() {
        // The built-in tokenizer splits at every seam anyway, so tokenising the
        // whole conversation changes nothing for it (nor for its results).
        let ds = ShapesDataset::new(ShapesConfig::default(), Split::Train).unwrap();
        for template in ["vicuna_v1", "chatml", "plain"] {
            let mut c = collator();
            c.template = ChatTemplate::from_name(template, Some("")).unwrap();
            for i in 0..300 {
                let ex = ds.get(i).to_example();
                let seq = c.sequence(&ex).unwrap();
                assert_eq!((seq.ids, seq.labels), piecewise(&c, &ex), "{template} {i}");
            }
        }
    }

    #[test]
    fn a_sentencepiece_style_tokenizer_sees_the_conversation_as_one_string() {
        // Metaspace, as Vicuna's: every separately tokenised piece would start
        // with `▁`; in the whole string the second `USER:` follows `</s>` directly.
        let vocab: serde_json::Map<String, serde_json::Value> = [
            "<unk>",
            "<s>",
            "</s>",
            "<image>",
            "▁USER:",
            "USER:",
            "▁ASSISTANT:",
            "▁hi",
            "▁red",
            "▁and",
            "▁blue",
            "\n",
        ]
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), serde_json::json!(i)))
        .collect();
        let added: Vec<_> = ["<unk>", "<s>", "</s>", "<image>"]
            .iter()
            .enumerate()
            .map(|(id, s)| {
                serde_json::json!({"id": id, "content": s, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let doc = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
        });
        let tok = TextTokenizer::from_json(&doc.to_string()).unwrap();
        let c = Collator {
            tokenizer: Arc::new(tok),
            template: ChatTemplate::from_name("vicuna_v1", Some("")).unwrap(),
            max_text_len: 512,
        };
        let mut ex = Example::single_turn("x", None, "hi", "red");
        ex.turns.push(crate::Turn {
            from: Role::Human,
            value: "hi".into(),
        });
        ex.turns.push(crate::Turn {
            from: Role::Gpt,
            value: "blue".into(),
        });
        let seq = c.sequence(&ex).unwrap();
        let id = |w: &str| c.tokenizer.token_to_id(w).unwrap();
        // <s> ▁USER: ▁hi ▁ASSISTANT: ▁red </s> USER: ▁hi ▁ASSISTANT: ▁blue </s>
        assert_eq!(
            seq.ids,
            [
                id("<s>"),
                id("▁USER:"),
                id("▁hi"),
                id("▁ASSISTANT:"),
                id("▁red"),
                id("</s>"),
                id("USER:"),
                id("▁hi"),
                id("▁ASSISTANT:"),
                id("▁blue"),
                id("</s>")
            ]
        );
        let supervised: Vec<bool> = seq.labels.iter().map(|&l| l != IGNORE_INDEX).collect();
        assert_eq!(
            supervised,
            [false, false, false, false, true, true, false, false, false, true, true]
        );
        // Piece by piece, the second question would start with `▁USER:`.
        assert_ne!(piecewise(&c, &ex).0, seq.ids);
    }

    #[test]
    fn placeholder_without_image_is_refused() {
        let c = collator();
        let ex = Example::single_turn("x", None, "<image>\nWhat color is the circle?", "red");
        assert!(c.sequence(&ex).is_err());
    }
}
