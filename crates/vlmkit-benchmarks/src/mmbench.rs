//! MMBench (dev), scored offline with circular evaluation.
//!
//! LLaVA-1.5 uploads its replies to the OpenCompass server, which reads an
//! option from each reply with a ChatGPT judge where rules fail. vlmkit uses no
//! judge: it applies VLMEvalKit's rule-based extraction (`can_infer`, as
//! VLMEvalKit had it from January 2024 to August 2025, its "exact matching"
//! mode) — the offline rule, which agrees with the judge whenever a reply names
//! its option plainly, as LLaVA-1.5's replies do:
//! - a reply holding one of the refusals VLMEvalKit lists reads as `Z` (wrong);
//! - `.()[],:;!*#{}` become spaces and the reply is split into words; exactly
//!   one distinct option letter among the words is that option; else a lone `Z`
//!   word is `Z`;
//! - else the one option whose text (lower-cased) the lower-cased reply
//!   contains; else nothing (wrong).
//!
//! Circular evaluation: the dev file holds each question's rotated copies as
//! rows whose `index` differs by multiples of 1,000,000; a question counts as
//! right only if every copy is. The headline is that accuracy over questions,
//! %; per `l2-category` and `category` beside it. Every row must be answered.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde_json::{json, Map};

use crate::files::read_text;
use crate::questions::OPTION_LETTER;
use crate::table::{two, Table};
use crate::{
    into_map, pytext, Benchmark, BenchmarkError, Inputs, LmmsEval, Outcome, QuestionId, Score,
};
use crate::{Question, QuestionImage};

pub(crate) struct MmBench;

const NAME: &str = "mmbench";
const COPY_STRIDE: u64 = 1_000_000;

/// The strings pandas' `read_table` reads as missing.
const PANDAS_NA: [&str; 19] = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
];

const REFUSALS: [&str; 4] = [
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
];

/// The option a reply gives: a letter, `Z` (a refusal), or `None`.
pub(crate) fn read_option(reply: &str, options: &[(char, String)]) -> Option<char> {
    if reply.contains("Failed to obtain answer via API") {
        return read_by_text(reply, options);
    }
    if REFUSALS.iter().any(|r| reply.contains(r)) {
        return Some('Z');
    }
    let spaced: String = reply
        .chars()
        .map(|c| if ".()[],:;!*#{}".contains(c) { ' ' } else { c })
        .collect();
    let words: HashSet<&str> = pytext::split(&spaced).collect();
    let named: Vec<char> = options
        .iter()
        .map(|(letter, _)| *letter)
        .filter(|letter| words.contains(letter.encode_utf8(&mut [0; 4]) as &str))
        .collect();
    match named.as_slice() {
        [one] => return Some(*one),
        [] if words.contains("Z") => return Some('Z'),
        _ => {}
    }
    read_by_text(reply, options)
}

fn read_by_text(reply: &str, options: &[(char, String)]) -> Option<char> {
    let reply = reply.to_lowercase();
    let named: Vec<char> = options
        .iter()
        .filter(|(_, text)| reply.contains(&text.to_lowercase()))
        .map(|(letter, _)| *letter)
        .collect();
    match named.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// A TSV file's records, each with the line it starts on. A field that starts
/// with `"` is quoted, with `""` for a quote, and may hold tabs and line breaks
/// (pandas' reading, for these files). Empty lines are skipped.
fn tsv_records(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut records = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while chars.peek().is_some() {
        let start = line;
        let mut fields = Vec::new();
        loop {
            let mut field = String::new();
            let mut quoted = chars.peek() == Some(&'"');
            if quoted {
                chars.next();
            }
            while let Some(&c) = chars.peek() {
                if quoted {
                    chars.next();
                    match c {
                        '"' if chars.peek() == Some(&'"') => {
                            chars.next();
                            field.push('"');
                        }
                        '"' => quoted = false,
                        c => {
                            line += usize::from(c == '\n');
                            field.push(c);
                        }
                    }
                } else if c == '\t' || c == '\n' || c == '\r' {
                    break;
                } else {
                    chars.next();
                    field.push(c);
                }
            }
            fields.push(field);
            match chars.next() {
                Some('\t') => continue,
                Some('\r') if chars.peek() == Some(&'\n') => {
                    chars.next();
                }
                _ => {}
            }
            line += 1;
            break;
        }
        if !(fields.len() == 1 && fields[0].is_empty()) {
            records.push((start, fields));
        }
    }
    records
}

struct Row {
    index: u64,
    answer: char,
    options: Vec<(char, String)>,
    category: Option<String>,
    l2_category: Option<String>,
}

/// A TSV file's header and records.
type Records = (Vec<String>, Vec<(usize, Vec<String>)>);

fn read_table(path: &Path) -> Result<Records, BenchmarkError> {
    let text = read_text(path)?;
    let mut records = tsv_records(&text).into_iter();
    match records.next() {
        Some((_, header)) => Ok((header, records.collect())),
        None => Err(BenchmarkError::format(
            path,
            None,
            "is empty (expected MMBench's dev TSV)",
        )),
    }
}

/// LLaVA's `is_none`: nothing, NaN (pandas' missing-value strings), or the
/// text `nan`/`none` in any case.
fn is_none(cell: Option<&str>) -> bool {
    cell.is_none_or(|c| {
        PANDAS_NA.contains(&c) || ["nan", "none"].contains(&c.to_lowercase().as_str())
    })
}

fn read_rows(path: &Path) -> Result<Vec<Row>, BenchmarkError> {
    let (header, records) = read_table(path)?;
    let column = |name: &str| header.iter().position(|h| h == name);
    let need = |name: &str| {
        column(name).ok_or_else(|| {
            BenchmarkError::format(
                path,
                Some(1),
                format!("no `{name}` column (MMBench's dev TSV)"),
            )
        })
    };
    let (index_col, answer_col) = (need("index")?, need("answer")?);
    let letters: Vec<(char, usize)> = ('A'..='Z')
        .filter_map(|c| column(&c.to_string()).map(|i| (c, i)))
        .collect();
    let (category_col, l2_col) = (column("category"), column("l2-category"));
    let mut rows = Vec::new();
    for (line_number, fields) in records {
        let cell = |i: usize| {
            fields
                .get(i)
                .map(String::as_str)
                .filter(|v| !PANDAS_NA.contains(v))
        };
        let index = cell(index_col)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                BenchmarkError::format(path, Some(line_number), "`index` is not a whole number")
            })?;
        let bad = |message: &str| BenchmarkError::BadEntry {
            path: path.to_owned(),
            id: QuestionId::new(index.to_string()),
            message: format!("line {line_number}: {message}"),
        };
        let options: Vec<(char, String)> = letters
            .iter()
            .filter_map(|(letter, i)| cell(*i).map(|text| (*letter, text.to_owned())))
            .collect();
        let answer = cell(answer_col)
            .and_then(|a| a.chars().next())
            .filter(|a| options.iter().any(|(letter, _)| letter == a))
            .ok_or_else(|| bad("its `answer` is not one of its options' letters"))?;
        rows.push(Row {
            index,
            answer,
            options,
            category: category_col.and_then(cell).map(str::to_owned),
            l2_category: l2_col.and_then(cell).map(str::to_owned),
        });
    }
    Ok(rows)
}

impl Benchmark for MmBench {
    fn name(&self) -> &'static str {
        NAME
    }

    fn column(&self) -> &'static str {
        "MMB"
    }

    fn inputs_help(&self) -> &'static str {
        "--annotations: MMBench's dev TSV with answers (mmbench_dev_20230712.tsv), its circular copies included"
    }

    fn lmms_eval(&self) -> LmmsEval {
        LmmsEval::Unavailable(
            "lmms-eval's mmbench_en_dev sends replies its heuristic cannot read to a GPT judge; vlmkit scores MMBench \
             offline with VLMEvalKit's rule only",
        )
    }

    /// The dev TSV as `model_vqa_mmbench.py --single-pred-prompt` asks it: the
    /// hint and question, then `A. …` for each option up to the first missing
    /// one, then the option-letter instruction; one round per row (the file
    /// holds the rotated copies); the base64 image decoded.
    fn questions(&self, path: &Path) -> Result<Vec<Question>, BenchmarkError> {
        use base64::Engine;
        let (header, records) = read_table(path)?;
        let column = |name: &str| {
            header.iter().position(|h| h == name).ok_or_else(|| {
                BenchmarkError::format(
                    path,
                    Some(1),
                    format!("no `{name}` column (MMBench's dev TSV)"),
                )
            })
        };
        let (index_col, question_col, image_col) =
            (column("index")?, column("question")?, column("image")?);
        let hint_col = header.iter().position(|h| h == "hint");
        let letter_cols: Vec<(char, Option<usize>)> = ['A', 'B', 'C', 'D']
            .iter()
            .map(|c| (*c, header.iter().position(|h| *h == c.to_string())))
            .collect();
        records
            .into_iter()
            .map(|(line, fields)| {
                let cell = |i: usize| fields.get(i).map(String::as_str);
                let index: u64 = cell(index_col)
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| {
                        BenchmarkError::format(path, Some(line), "`index` is not a whole number")
                    })?;
                let mut options = Vec::new();
                for (_, col) in &letter_cols {
                    let value = col.and_then(cell);
                    if is_none(value) {
                        break;
                    }
                    options.push(value.unwrap_or_default().to_owned());
                }
                let mut question = cell(question_col).unwrap_or_default().to_owned();
                if let Some(hint) = hint_col.and_then(cell).filter(|h| !is_none(Some(h))) {
                    question = format!("{hint}\n{question}");
                }
                let letters: Vec<String> = letter_cols
                    .iter()
                    .take(options.len())
                    .map(|(c, _)| c.to_string())
                    .collect();
                for (letter, option) in letters.iter().zip(&options) {
                    question.push_str(&format!("\n{letter}. {option}"));
                }
                let image = base64::engine::general_purpose::STANDARD
                    .decode(cell(image_col).unwrap_or_default().trim())
                    .map_err(|e| {
                        BenchmarkError::format(
                            path,
                            Some(line),
                            format!("`image` is not base64: {e}"),
                        )
                    })?;
                let mut extra = Map::new();
                extra.insert("round_id".into(), json!(0));
                extra.insert("options".into(), json!(options));
                extra.insert("option_char".into(), json!(letters));
                Ok(Question {
                    id: json!(index),
                    image: Some(QuestionImage::Encoded(image)),
                    text: format!("{question}\n{OPTION_LETTER}"),
                    prompt: question,
                    extra,
                })
            })
            .collect()
    }

    fn max_new_tokens(&self) -> usize {
        1024
    }

    fn score(&self, inputs: &Inputs<'_>) -> Result<Outcome, BenchmarkError> {
        let path = inputs.annotations(NAME, "MMBench's dev TSV")?;
        let rows = read_rows(path)?;
        let answers = inputs.answers;
        let ids: Vec<QuestionId> = rows
            .iter()
            .map(|r| QuestionId::new(r.index.to_string()))
            .collect();
        let by_id = answers.one_per_question(path, &ids.iter().collect::<Vec<_>>(), None)?;

        // Per question (index % 1e6): whether every copy is right, and its categories (from the main row).
        let mut questions: BTreeMap<u64, (bool, Option<&str>, Option<&str>)> = BTreeMap::new();
        let mut unread = 0;
        for (row, id) in rows.iter().zip(&ids) {
            let read = read_option(&by_id[id].text, &row.options);
            unread += usize::from(read.is_none());
            let question = questions
                .entry(row.index % COPY_STRIDE)
                .or_insert((true, None, None));
            question.0 &= read == Some(row.answer);
            if row.index < COPY_STRIDE {
                question.1 = row.l2_category.as_deref();
                question.2 = row.category.as_deref();
            }
        }
        // VLMEvalKit scores a question only when its own row (index < 1e6) is in the file.
        let main_rows: HashSet<u64> = rows
            .iter()
            .map(|r| r.index)
            .filter(|i| *i < COPY_STRIDE)
            .collect();
        let orphans = questions.keys().filter(|i| !main_rows.contains(i)).count();
        questions.retain(|i, _| main_rows.contains(i));
        if questions.is_empty() {
            return Err(BenchmarkError::Unscorable {
                benchmark: NAME,
                reason: format!(
                    "{} holds no question rows (index below 1,000,000)",
                    path.display()
                ),
            });
        }
        let accuracy =
            |hits: &[bool]| hits.iter().filter(|h| **h).count() as f64 / hits.len() as f64 * 100.0;
        let all: Vec<bool> = questions.values().map(|q| q.0).collect();
        let overall = accuracy(&all);
        let mut table = Table::new(["", "questions", "accuracy"]);
        table.row(["overall".to_owned(), all.len().to_string(), two(overall)]);
        // By `l2-category` (level 2) or `category` (level 3).
        let mut grouped = |level: u8| {
            let mut groups: BTreeMap<&str, Vec<bool>> = BTreeMap::new();
            for q in questions.values() {
                if let Some(name) = if level == 2 { q.1 } else { q.2 } {
                    groups.entry(name).or_default().push(q.0);
                }
            }
            let mut map = Map::new();
            for (name, hits) in groups {
                table.row([
                    name.to_owned(),
                    hits.len().to_string(),
                    two(accuracy(&hits)),
                ]);
                map.insert(name.to_owned(), json!(accuracy(&hits)));
            }
            map
        };
        let l2 = grouped(2);
        let categories = grouped(3);
        Ok(Outcome::Score(Score {
            benchmark: NAME,
            convention: inputs.convention,
            score: overall,
            headline: "circular accuracy (every rotated copy right), %",
            unit: "%",
            metrics: into_map(json!({
                "accuracy": overall,
                "questions": all.len(),
                "rows": rows.len(),
                "replies_naming_no_option": unread,
                "copies_without_their_question": orphans,
                "per_l2_category": l2,
                "per_category": categories,
            })),
            notes: vec![
                "offline rule (VLMEvalKit's can_infer, no GPT judge); LLaVA's published MMBench numbers come from \
                 the OpenCompass server, which adds a ChatGPT judge for replies the rule cannot read"
                    .into(),
            ],
            table,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Vec<(char, String)> {
        [
            ('A', "cat"),
            ('B', "dog"),
            ('C', "teddy bear"),
            ('D', "rabbit"),
        ]
        .into_iter()
        .map(|(l, t)| (l, t.to_owned()))
        .collect()
    }

    #[test]
    fn options_read_as_vlmevalkit_reads_them() {
        let o = options();
        for (reply, read) in [
            ("A", Some('A')),
            ("B.", Some('B')),
            ("(C)", Some('C')),
            ("Answer: C", Some('C')),
            ("B. dog", Some('B')),
            ("A dog", Some('A')),
            ("a", None),
            ("A B", None),
            ("Z", Some('Z')),
            ("E", None),
            ("**A**", Some('A')),
            ("B'", None),
            ("Cannot determine the answer", Some('Z')),
            ("It is a dog", Some('B')),
            ("Teddy Bear!", Some('C')),
            ("a cat or a dog", None),
            ("x x x x B x x x x", Some('B')),
            ("The answer is a dog", Some('B')),
        ] {
            assert_eq!(read_option(reply, &o), read, "{reply:?}");
        }
    }

    #[test]
    fn tsv_quoting() {
        let records = tsv_records("i\tq\r\n1\t\"a\tb\"\n\n2\t\"say \"\"hi\"\"\nthere\"\n3\t\n");
        let fields = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            records,
            [
                (1, fields(&["i", "q"])),
                (2, fields(&["1", "a\tb"])),
                (4, fields(&["2", "say \"hi\"\nthere"])),
                (6, fields(&["3", ""])),
            ]
        );
    }
}
