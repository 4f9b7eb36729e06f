//! Examples → token sequences with labels that supervise only the answers, and
//! images → normalised pixel arrays.

use std::sync::Arc;

use vlmkit_core::ops::IGNORE_INDEX;
use vlmkit_core::TokenSequence;

use crate::error::DataError;
use crate::example::{placeholder_problem, Example, Role, IMAGE_TOKEN};
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
        Ok(self.sequence_cut(example)?.0)
    }

    /// As [`Collator::sequence`], with the length before `max_text_len` cut it
    /// (`None`: it fits). A cut that leaves no answer token, or cuts away the
    /// image's placeholder, makes the example unusable: it would train on
    /// nothing, or on an image it no longer shows.
    pub fn sequence_cut(
        &self,
        example: &Example,
    ) -> Result<(TokenSequence, Option<usize>), DataError> {
        let turns = self.with_placeholder(example)?;
        let segments = self.template.render(&turns)?;
        let (sequence, cut) = self.tokenize(example, &segments)?;
        if let Some(full) = cut {
            if sequence.supervised() == 0 {
                return Err(self.too_long(example, full, "no answer token is left"));
            }
        }
        Ok((sequence, cut))
    }

    /// The first question up to where its answer starts, nothing supervised. A
    /// prompt longer than `max_text_len` is refused: cut, it would end before the
    /// answer's cue.
    pub fn prompt(&self, example: &Example) -> Result<TokenSequence, DataError> {
        let turns = self.with_placeholder(example)?;
        let segments = self.template.prompt(&turns)?;
        match self.tokenize(example, &segments)? {
            (sequence, None) => Ok(sequence),
            (_, Some(full)) => Err(self.too_long(example, full, "the prompt does not fit")),
        }
    }

    fn too_long(&self, example: &Example, full: usize, consequence: &str) -> DataError {
        unusable(
            example,
            format!(
                "{full} text tokens, more than the {} the model has room for: {consequence}",
                self.max_text_len
            ),
        )
    }

    /// LLaVA places `<image>` in the first human turn; add it when an example with an
    /// image lacks it, refuse a placeholder without an image.
    fn with_placeholder(&self, example: &Example) -> Result<Vec<crate::Turn>, DataError> {
        if let Some(reason) = placeholder_problem(&example.turns, example.image.is_some()) {
            return Err(unusable(example, reason));
        }
        let mut turns = example.turns.clone();
        let has_placeholder = turns.iter().any(|t| t.value.contains(IMAGE_TOKEN));
        if example.image.is_some() && !has_placeholder {
            if let Some(first) = turns.iter_mut().find(|t| t.from == Role::Human) {
                first.value = format!("{IMAGE_TOKEN}\n{}", first.value);
            }
        }
        Ok(turns)
    }

    /// The segments' tokens, cut at `max_text_len`, and the length before the cut
    /// when there was one.
    fn tokenize(
        &self,
        example: &Example,
        segments: &[Segment],
    ) -> Result<(TokenSequence, Option<usize>), DataError> {
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
        let full = ids.len();
        ids.truncate(self.max_text_len);
        labels.truncate(self.max_text_len);
        let image_at = ids.iter().position(|&id| id == tok.image);
        if example.image.is_some() && image_at.is_none() {
            return Err(self.too_long(example, full, "the image's placeholder is cut off"));
        }
        // The question is part of the sequence, so it fits the same bound; a
        // connector reading it (CCRA's T×T attention) stays bounded too.
        let (mut query, query_text) = match example.question() {
            Some(q) => (tok.encode(&q)?, q),
            None => (Vec::new(), String::new()),
        };
        query.truncate(self.max_text_len);
        let sequence = TokenSequence {
            ids,
            labels,
            image_at,
            query,
            query_text,
        };
        Ok((sequence, (full > self.max_text_len).then_some(full)))
    }
}

fn unusable(example: &Example, reason: String) -> DataError {
    DataError::Unusable {
        example: example.id.clone(),
        reason,
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
