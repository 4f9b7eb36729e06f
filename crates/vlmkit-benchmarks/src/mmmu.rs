//! MMMU (validation), as MMMU's official evaluator scores it
//! (`mmmu/utils/eval_utils.py`, `main_parse_and_eval.py`, `main_eval_only.py`).
//!
//! `--annotations` is `answer_dict_val.json` (`{id: {question_type, ground_truth}}`).
//! An answer's `question_id` is the MMMU id (`validation_Art_1`). A
//! multiple-choice reply is read by `parse_multi_choice_response` when the
//! answer line carries the question's `options` (a list, as LLaVA's MMBench
//! answers carry theirs): `(X)`, then ` X `, then (for replies of more than five
//! words) the one option text the reply contains, the last-occurring winning
//! ties; a reply naming none gets `random.choice` of the letters from Python's
//! generator seeded with 42, drawn in the official order (subjects in the
//! evaluator's order, answers in file order). Without `options` the reply must
//! already be the letter, as `main_eval_only.py` takes it. An open reply goes
//! through `parse_open_response` (key phrases after "so", "is", "answer", …,
//! numbers, two-decimal rounding) and is right when a prediction contains a
//! text answer or equals a numeric one.
//!
//! Accuracy is per subject; the headline is the instance-level accuracy over
//! all questions (MMMU's "Overall"), × 100.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use fancy_regex::Regex;
use serde_json::{json, Map, Value};

use crate::files::Ordered;
use crate::pyrandom::PyRandom;
use crate::table::{two, Table};
use crate::{
    into_map, pytext, Benchmark, BenchmarkError, Inputs, LmmsEval, Outcome, QuestionId, Score,
};

pub(crate) struct Mmmu;

const NAME: &str = "mmmu";

/// `DOMAIN_CAT2SUB_CAT`, and within it the subjects; the evaluator's order of
/// subjects is `CAT_SHORT2LONG`'s (alphabetical by short name), given by
/// [`EVALUATION_ORDER`].
const DOMAINS: [(&str, &[&str]); 6] = [
    ("Art and Design", &["Art", "Art_Theory", "Design", "Music"]),
    (
        "Business",
        &["Accounting", "Economics", "Finance", "Manage", "Marketing"],
    ),
    (
        "Science",
        &["Biology", "Chemistry", "Geography", "Math", "Physics"],
    ),
    (
        "Health and Medicine",
        &[
            "Basic_Medical_Science",
            "Clinical_Medicine",
            "Diagnostics_and_Laboratory_Medicine",
            "Pharmacy",
            "Public_Health",
        ],
    ),
    (
        "Humanities and Social Science",
        &["History", "Literature", "Sociology", "Psychology"],
    ),
    (
        "Tech and Engineering",
        &[
            "Agriculture",
            "Architecture_and_Engineering",
            "Computer_Science",
            "Electronics",
            "Energy_and_Power",
            "Materials",
            "Mechanical_Engineering",
        ],
    ),
];

const EVALUATION_ORDER: [&str; 30] = [
    "Accounting",
    "Agriculture",
    "Architecture_and_Engineering",
    "Art",
    "Art_Theory",
    "Basic_Medical_Science",
    "Biology",
    "Chemistry",
    "Clinical_Medicine",
    "Computer_Science",
    "Design",
    "Diagnostics_and_Laboratory_Medicine",
    "Economics",
    "Electronics",
    "Energy_and_Power",
    "Finance",
    "Geography",
    "History",
    "Literature",
    "Manage",
    "Marketing",
    "Materials",
    "Math",
    "Mechanical_Engineering",
    "Music",
    "Pharmacy",
    "Physics",
    "Psychology",
    "Public_Health",
    "Sociology",
];

/// A prediction or a gold answer after `normalize_str`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Normal {
    Text(String),
    Number(f64),
}

/// Python's `float(s)`: surrounding whitespace, a sign, `_` between digits,
/// any Unicode decimal digits, `inf`/`infinity`/`nan` in any case.
pub(crate) fn py_float(s: &str) -> Option<f64> {
    // float() strips whitespace, but not the separators U+001C..U+001F.
    let s = s.trim_matches(char::is_whitespace);
    let mut ascii = String::with_capacity(s.len());
    let chars: Vec<char> = s.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == '_' {
            let digit = |j: Option<usize>| {
                j.and_then(|j| chars.get(j))
                    .is_some_and(|c| pytext::is_decimal(*c))
            };
            if !digit(i.checked_sub(1)) || !digit(Some(i + 1)) {
                return None;
            }
        } else if pytext::is_decimal(c) {
            ascii.push(char::from(b'0' + unicode_digit_value(c)));
        } else if c.is_ascii() {
            ascii.push(c);
        } else {
            return None;
        }
    }
    let unsigned = ascii.strip_prefix(['+', '-']).unwrap_or(&ascii);
    let special = unsigned.to_ascii_lowercase();
    if ["inf", "infinity", "nan"].contains(&special.as_str()) {
        let value = if special == "nan" {
            f64::NAN
        } else {
            f64::INFINITY
        };
        return Some(if ascii.starts_with('-') {
            -value
        } else {
            value
        });
    }
    static DECIMAL: LazyLock<regex::Regex> =
        LazyLock::new(|| regex::Regex::new(r"^(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$").expect("valid"));
    if !DECIMAL.is_match(unsigned) {
        return None;
    }
    ascii.parse().ok()
}

/// The value of a Unicode decimal digit: Nd digits come in runs of ten from 0.
fn unicode_digit_value(c: char) -> u8 {
    if c.is_ascii_digit() {
        return c as u8 - b'0';
    }
    let mut run = 0u32;
    let mut code = c as u32;
    while let Some(before) = code.checked_sub(1).and_then(char::from_u32) {
        if !pytext::is_decimal(before) {
            break;
        }
        run += 1;
        code -= 1;
    }
    (run % 10) as u8
}

/// Python's `round(x, 2)` (correctly rounded, ties to even on the exact value).
fn round2(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    format!("{x:.2}").parse().unwrap_or(x)
}

/// `normalize_str`.
pub(crate) fn normalize(text: &str) -> Vec<Normal> {
    let text = pytext::strip(text);
    if let Some(number) = py_float(&text.replace(',', "")) {
        return vec![Normal::Number(round2(number))];
    }
    let lower = text.to_lowercase();
    if lower.chars().count() == 1 {
        return vec![
            Normal::Text(format!(" {lower}")),
            Normal::Text(format!("{lower} ")),
        ];
    }
    vec![Normal::Text(lower)]
}

/// `extract_numbers`: numbers with thousands commas, in scientific notation,
/// and plain ones, in that order (one number may appear more than once).
pub(crate) fn extract_numbers(text: &str) -> Vec<String> {
    // Python's `\b` on `str`: between a `\w` (a letter, a number or `_`) and
    // not; the regex engine's own counts marks and joiners as word characters.
    const B: &str = r"(?:(?<=[\p{L}\p{N}_])(?![\p{L}\p{N}_])|(?<![\p{L}\p{N}_])(?=[\p{L}\p{N}_]))";
    static PATTERNS: LazyLock<[Regex; 3]> = LazyLock::new(|| {
        [
            format!(r"-?{B}\d{{1,3}}(?:,\d{{3}})+{B}"),
            r"-?\d+(?:\.\d+)?[eE][+-]?\d+".to_owned(),
            format!(r"-?(?:\d+\.\d+|\.\d+|\d+{B})(?![eE][+-]?\d+)(?![,\d])"),
        ]
        .map(|p| Regex::new(&p).expect("valid"))
    });
    PATTERNS
        .iter()
        .flat_map(|p| {
            p.find_iter(text)
                .filter_map(Result::ok)
                .map(|m| m.as_str().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `parse_open_response`: the candidate answers in a reply, normalised.
pub(crate) fn parse_open(reply: &str) -> Vec<Normal> {
    let response = pytext::strip(reply).trim_matches('.').to_lowercase();
    // The official split `\.\s(?=[A-Z])|\n` runs on lower-cased text: only
    // the line breaks ever split.
    let parts: Vec<&str> = response.split('\n').collect();
    let mut indicators = vec![
        "could be ",
        "so ",
        "is ",
        "thus ",
        "therefore ",
        "final ",
        "answer ",
        "result ",
    ];
    let mut keys: Vec<String> = Vec::new();
    for (index, part) in parts.iter().enumerate() {
        if index == parts.len() - 1 {
            indicators.push("=");
        }
        let mut shortest: Option<String> = None;
        for indicator in &indicators {
            if part.contains(indicator) {
                let after = pytext::strip(part.rsplit(indicator).next().unwrap_or("")).to_owned();
                // An empty candidate counts as none, so the next one replaces it.
                match &shortest {
                    Some(s) if !s.is_empty() => {
                        if after.chars().count() < s.chars().count() {
                            shortest = Some(after);
                        }
                    }
                    _ => shortest = Some(after),
                }
            }
        }
        if let Some(key) = shortest.filter(|s| !s.is_empty()) {
            if ![":", ",", ".", "!", "?", ";", "'"].contains(&pytext::strip(&key)) {
                keys.push(key);
            }
        }
    }
    if keys.is_empty() {
        keys.push(response.clone());
    }
    let mut predictions = keys.clone();
    for key in &keys {
        predictions.extend(extract_numbers(key));
    }
    let mut normal: Vec<Normal> = Vec::new();
    for p in predictions.iter().flat_map(|p| normalize(p)) {
        if !normal.contains(&p) {
            normal.push(p);
        }
    }
    normal
}

/// `eval_open`: a text prediction containing a text gold answer, or a number
/// equal to a numeric one.
pub(crate) fn open_right(gold: &[String], predictions: &[Normal]) -> bool {
    let gold: Vec<Normal> = gold.iter().flat_map(|g| normalize(g)).collect();
    predictions.iter().any(|p| match p {
        Normal::Text(p) => gold
            .iter()
            .any(|g| matches!(g, Normal::Text(g) if p.contains(g.as_str()))),
        Normal::Number(p) => gold
            .iter()
            .any(|g| matches!(g, Normal::Number(g) if g == p)),
    })
}

/// `parse_multi_choice_response`: the letter a reply gives among `options`
/// (letters from A); `random` supplies the draw for a reply that gives none.
pub(crate) fn parse_choice(
    reply: &str,
    options: &[String],
    random: &mut PyRandom,
) -> (String, bool) {
    let letters: Vec<String> = (0..options.len())
        .map(|i| char::from(b'A' + i as u8).to_string())
        .collect();
    let mut response = reply;
    for c in [',', '.', '!', '?', ';', ':', '\''] {
        response = response.trim_matches(c);
    }
    let response = format!(" {response} ");
    let mut candidates: Vec<usize> = Vec::new();
    let mut bracketed = false;
    let mut by_text = false;
    for (i, letter) in letters.iter().enumerate() {
        if response.contains(&format!("({letter})")) {
            candidates.push(i);
            bracketed = true;
        }
    }
    if candidates.is_empty() {
        candidates = (0..letters.len())
            .filter(|&i| response.contains(&format!(" {} ", letters[i])))
            .collect();
    }
    let lower = response.to_lowercase();
    if candidates.is_empty() && pytext::split(&response).count() > 5 {
        candidates = (0..options.len())
            .filter(|&i| lower.contains(&options[i].to_lowercase()))
            .collect();
        by_text = !candidates.is_empty();
    }
    let chosen = match candidates.as_slice() {
        [] => return (letters[random.choice(letters.len())].clone(), true),
        [one] => *one,
        many => {
            let position = |i: usize| -> Option<usize> {
                if by_text {
                    lower.rfind(&options[i].to_lowercase())
                } else if bracketed {
                    response.rfind(&format!("({})", letters[i]))
                } else {
                    response.rfind(&format!(" {} ", letters[i]))
                }
            };
            // np.argmax: the first of the greatest positions (-1 for none).
            let mut best = many[0];
            let mut best_at = position(best).map_or(-1, |p| p as i64);
            for &i in &many[1..] {
                let at = position(i).map_or(-1, |p| p as i64);
                if at > best_at {
                    best = i;
                    best_at = at;
                }
            }
            best
        }
    };
    (letters[chosen].clone(), false)
}

/// `"_".join(id.split("_")[1:-1])`.
fn subject_of(id: &str) -> String {
    let parts: Vec<&str> = id.split('_').collect();
    if parts.len() < 2 {
        return String::new();
    }
    parts[1..parts.len() - 1].join("_")
}

enum Gold {
    Choice(Vec<String>),
    Open(Vec<String>),
}

impl Benchmark for Mmmu {
    fn name(&self) -> &'static str {
        NAME
    }

    fn column(&self) -> &'static str {
        "MMMU"
    }

    fn inputs_help(&self) -> &'static str {
        "--annotations: MMMU's answer_dict_val.json; multiple-choice answers carry their `options` (or are the letter)"
    }

    fn lmms_eval(&self) -> LmmsEval {
        LmmsEval::Unavailable(
            "lmms-eval's mmmu_val draws its random letters from its own seeding, and since 2025-06 (#724) scores \
             every open question wrong; its number cannot be reproduced from the answers alone",
        )
    }

    fn score(&self, inputs: &Inputs<'_>) -> Result<Outcome, BenchmarkError> {
        let path = inputs.annotations(NAME, "MMMU's answer_dict_val.json")?;
        let text = crate::files::read_text(path)?;
        let Ordered(entries) = serde_json::from_str(&text).map_err(|e| {
            BenchmarkError::format(
                path,
                Some(e.line()),
                format!("{e} (expected answer_dict_val.json)"),
            )
        })?;
        let mut gold: HashMap<QuestionId, Gold> = HashMap::with_capacity(entries.len());
        let mut order = Vec::with_capacity(entries.len());
        for (id, entry) in entries {
            let id = QuestionId::new(id);
            let bad = |message: &str| BenchmarkError::BadEntry {
                path: path.to_owned(),
                id: id.clone(),
                message: message.to_owned(),
            };
            let truth = match entry.get("ground_truth") {
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(list)) => list
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad("`ground_truth` holds a non-string"))?,
                _ => return Err(bad("no `ground_truth` string or list")),
            };
            let kind = entry
                .get("question_type")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("no `question_type`"))?;
            order.push(id.clone());
            gold.insert(
                id,
                if kind == "multiple-choice" {
                    Gold::Choice(truth)
                } else {
                    Gold::Open(truth)
                },
            );
        }
        let answers = inputs.answers;
        answers.one_per_question(path, &order.iter().collect::<Vec<_>>(), None)?;

        let mut random = PyRandom::seed(42);
        let mut per_subject: HashMap<String, (usize, usize)> = HashMap::new();
        let (mut parsed, mut given, mut drawn) = (0, 0, 0);
        let mut subjects_seen: HashSet<String> = HashSet::new();
        // Subjects in the evaluator's order: the random draws follow it. Ids of
        // subjects it does not know are refused below.
        for subject in EVALUATION_ORDER.map(String::from) {
            for answer in answers
                .answers
                .iter()
                .filter(|a| subject_of(a.question_id.as_str()) == subject)
            {
                subjects_seen.insert(subject.clone());
                let right = match &gold[&answer.question_id] {
                    Gold::Choice(truth) => {
                        let letter = match answer.extra.get("options") {
                            Some(Value::Array(options)) => {
                                let options = options
                                    .iter()
                                    .map(|o| o.as_str().map(str::to_owned))
                                    .collect::<Option<Vec<_>>>()
                                    .filter(|o| !o.is_empty() && o.len() <= 26)
                                    .ok_or_else(|| {
                                        BenchmarkError::format(
                                            &answers.path,
                                            Some(answer.line),
                                            "`options` must be a list of 1 to 26 strings",
                                        )
                                    })?;
                                let (letter, random_draw) =
                                    parse_choice(&answer.text, &options, &mut random);
                                parsed += 1;
                                drawn += usize::from(random_draw);
                                letter
                            }
                            _ => {
                                given += 1;
                                answer.text.clone()
                            }
                        };
                        truth.contains(&letter)
                    }
                    Gold::Open(truth) => open_right(truth, &parse_open(&answer.text)),
                };
                let slot = per_subject.entry(subject.clone()).or_default();
                slot.0 += usize::from(right);
                slot.1 += 1;
            }
        }
        if let Some(answer) = answers
            .answers
            .iter()
            .find(|a| !subjects_seen.contains(&subject_of(a.question_id.as_str())))
        {
            return Err(BenchmarkError::BadEntry {
                path: answers.path.clone(),
                id: answer.question_id.clone(),
                message: format!(
                    "line {}: not an MMMU subject's id (<split>_<Subject>_<n>)",
                    answer.line
                ),
            });
        }
        // `calculate_ins_level_acc`: Σ acc × n / Σ n, in the evaluator's order.
        let weighted = |subjects: &mut dyn Iterator<Item = &str>| {
            let (mut sum, mut n) = (0.0f64, 0usize);
            for subject in subjects {
                if let Some(&(right, count)) = per_subject.get(subject) {
                    sum += right as f64 / count as f64 * count as f64;
                    n += count;
                }
            }
            (n > 0).then(|| (sum / n as f64, n))
        };
        let (overall, total) =
            weighted(&mut EVALUATION_ORDER.iter().copied()).ok_or_else(|| {
                BenchmarkError::Unscorable {
                    benchmark: NAME,
                    reason: "no answers".into(),
                }
            })?;
        let mut table = Table::new(["", "questions", "accuracy"]);
        let mut domains = Map::new();
        let mut subjects = Map::new();
        for (domain, members) in DOMAINS {
            if let Some((accuracy, n)) = weighted(&mut members.iter().copied()) {
                table.row([domain.to_owned(), n.to_string(), two(100.0 * accuracy)]);
                domains.insert(
                    domain.to_owned(),
                    json!({"accuracy": accuracy, "questions": n}),
                );
            }
            for subject in members {
                if let Some(&(right, count)) = per_subject.get(*subject) {
                    subjects.insert(
                        subject.to_string(),
                        json!({"accuracy": right as f64 / count as f64, "questions": count}),
                    );
                }
            }
        }
        table.row([
            "overall".to_owned(),
            total.to_string(),
            two(100.0 * overall),
        ]);
        let mut notes = Vec::new();
        if drawn > 0 {
            notes.push(format!(
                "{drawn} multiple-choice replies named no option and were given a random letter, drawn as the official \
                 evaluator draws them (Python's generator, seed 42)"
            ));
        }
        Ok(Outcome::Score(Score {
            benchmark: NAME,
            convention: inputs.convention,
            score: 100.0 * overall,
            headline: "instance-level accuracy over the questions, × 100",
            unit: "%",
            metrics: into_map(json!({
                "accuracy": overall,
                "questions": total,
                "per_domain": domains,
                "per_subject": subjects,
                "choices_parsed": parsed,
                "choices_given_as_letters": given,
                "random_letters": drawn,
            })),
            notes,
            table,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(xs: &[Normal]) -> Vec<String> {
        let mut out: Vec<String> = xs
            .iter()
            .map(|x| match x {
                Normal::Text(t) => t.clone(),
                Normal::Number(n) => format!("{n:?}"),
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn python_float() {
        assert_eq!(py_float(" 1_000.5 "), Some(1000.5));
        assert_eq!(py_float("1__0"), None);
        assert_eq!(py_float("_1"), None);
        assert_eq!(py_float("١٢"), Some(12.0));
        assert_eq!(py_float("1e5"), Some(100000.0));
        assert_eq!(py_float(".5"), Some(0.5));
        assert_eq!(py_float("5."), Some(5.0));
        assert_eq!(py_float("-Infinity"), Some(f64::NEG_INFINITY));
        assert!(py_float("nan").unwrap().is_nan());
        assert_eq!(py_float("0x10"), None);
        assert_eq!(py_float("1 2"), None);
        assert_eq!(py_float(""), None);
        assert_eq!(py_float("5\u{1c}"), None);
    }

    #[test]
    fn open_parsing_as_the_evaluator_does() {
        assert_eq!(texts(&parse_open("36 watts")), ["36 watts", "36.0"]);
        assert_eq!(
            texts(&parse_open("The answer is 1,000.5 so")),
            ["0.5", "1,000.5 so", "1000.0"]
        );
        assert_eq!(texts(&parse_open("x = 3.14159")), ["3.14"]);
        assert_eq!(texts(&parse_open("Thus the value is 2.675")), ["2.67"]);
        assert_eq!(texts(&parse_open("12 and 7")), ["12 and 7", "12.0", "7.0"]);
        assert_eq!(texts(&parse_open("1e5")), ["100000.0", "5.0"]);
        // Python's \b: `²` is a number (a word character), a combining accent is not.
        assert!(extract_numbers("12²").is_empty());
        assert_eq!(extract_numbers("5\u{301}"), ["5"]);
        assert_eq!(texts(&parse_open("This is a test")), ["a test"]);
        assert_eq!(
            texts(&parse_open("final answer: 0.5\nso it is 7.")),
            ["0.5", "7.0", "answer: 0.5"]
        );
        assert_eq!(
            extract_numbers("-1,234 and 5e-3 and .5 and 7. and 3,45 and 12abc"),
            ["-1,234", "5e-3", "234", "-3", ".5", "7", "45"]
        );
    }

    #[test]
    fn choices_as_the_evaluator_reads_them() {
        let options: Vec<String> = ["apple", "banana", "cherry", "date"]
            .map(String::from)
            .to_vec();
        let mut random = PyRandom::seed(42);
        let mut read = |reply: &str| parse_choice(reply, &options, &mut random).0;
        assert_eq!(read("A"), "A");
        assert_eq!(read("A."), "A");
        assert_eq!(read("(B)"), "B");
        assert_eq!(read("The answer is C."), "C");
        assert_eq!(read("Answer: (A) or (C)"), "C");
        assert_eq!(read("A, B"), "B");
        assert_eq!(
            read("I think the answer is banana because it is yellow"),
            "B"
        );
        assert_eq!(read("The correct option is D. date"), "D");
        // Unreadable: the seeded stream's first draws for four letters are A, A, C.
        assert_eq!(read("**A**"), "A");
        assert_eq!(read("a"), "A");
        assert_eq!(read("B)"), "C");
    }

    #[test]
    fn open_answers_are_matched() {
        assert!(open_right(
            &["hormone".into()],
            &parse_open("the hormone insulin")
        ));
        assert!(open_right(&["1.06".into()], &parse_open("It is 1.06 m")));
        assert!(!open_right(&["1.06".into()], &parse_open("1.07")));
        assert!(open_right(
            &["24/7".into(), "3.429".into()],
            &parse_open("3.429")
        ));
    }
}
