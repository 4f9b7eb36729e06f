//! MME, as LLaVA-1.5 scores it: LLaVA's `convert_answer_to_mme.py` maps each
//! answer back to MME's ground truth, then MME's `eval_tool/calculation.py`
//! scores each subtask.
//!
//! `--annotations` is `MME_Benchmark_release_version/`: per subtask either
//! `<subtask>/images/` with `<subtask>/questions_answers_YN/<image>.txt`, or
//! images with their `.txt` side by side; each `.txt` holds an image's two
//! `question<TAB>Yes|No` lines. An answer's `question_id` is `<subtask>/…/<image
//! file>`, and its prompt is the question with LLaVA's short-answer suffix in
//! place of " Please answer yes or no.", as `llava_mme.jsonl` has them; the
//! question is found again by removing the suffix and appending " Please answer
//! yes or no." (or, failing that, the two-space form seven MME questions have).
//!
//! Scoring: a reply, lower-cased, is "yes" when `yes` occurs within its first
//! four characters, else "no" when `no` does, else "other" (always wrong).
//! Per subtask, acc = right answers / questions and acc+ = images with both
//! answers right / images, the two answers of an image being consecutive
//! answers in file order; the subtask's score is acc × 100 + acc+ × 100 (of
//! 200). The headline is the perception total (of 2000); cognition (of 800)
//! is beside it. Answers whose consecutive pairs are not of one image are
//! refused: the official script would silently pair them wrongly.
//!
//! lmms-eval (`mme`) also removes periods and reads a lone `y`/`n`, and pairs
//! an image's answers by id rather than by position.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Map};

use crate::files::read_text;
use crate::table::{two, Table};
use crate::{
    into_map, pytext, Benchmark, BenchmarkError, Convention, Inputs, LmmsEval, Outcome, QuestionId,
    Score,
};

pub(crate) struct Mme;

const NAME: &str = "mme";
const PERCEPTION: [&str; 10] = [
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
];
const COGNITION: [&str; 4] = [
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
];
const SHORT_ANSWER: &str = "Answer the question using a single word or phrase.";
const YES_OR_NO: &str = " Please answer yes or no.";

/// A ground-truth question: (subtask, `<image stem>.txt`, question).
type Key = (String, String, String);

struct Truth {
    answers: HashMap<Key, bool>,
    /// In reading order, for naming the missing ones.
    order: Vec<Key>,
    /// Subtasks whose directory the release lacks.
    absent: Vec<&'static str>,
}

/// Python's universal-newline lines, each with its line number.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split("\r\n")
        .flat_map(|part| part.split(['\r', '\n']))
        .enumerate()
        .map(|(i, line)| (i + 1, line))
}

fn read_truth(root: &Path) -> Result<Truth, BenchmarkError> {
    let mut truth = Truth {
        answers: HashMap::new(),
        order: Vec::new(),
        absent: Vec::new(),
    };
    for subtask in PERCEPTION.iter().chain(&COGNITION) {
        let dir = root.join(subtask);
        if !dir.is_dir() {
            // The release holds all 14; a part of it (the built-in data's
            // export) is scored over what it holds, and says so.
            truth.absent.push(subtask);
            continue;
        }
        let qa_dir = if dir.join("images").is_dir() {
            ["questions_answers_YN", "questions_answers_YES_NO"]
                .iter()
                .map(|name| dir.join(name))
                .find(|p| p.is_dir())
                .ok_or_else(|| {
                    BenchmarkError::format(
                        &dir,
                        None,
                        "has `images/` but no `questions_answers_YN/`",
                    )
                })?
        } else {
            dir.clone()
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&qa_dir)
            .map_err(|e| BenchmarkError::io(&qa_dir, e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .collect();
        files.sort();
        for file in files {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = read_text(&file)?;
            // Python iterates a file's lines without a last empty one, and none of an empty file.
            let text = ["\r\n", "\n", "\r"]
                .iter()
                .find_map(|end| text.strip_suffix(end))
                .unwrap_or(&text);
            if text.is_empty() {
                continue;
            }
            for (line, content) in lines(text) {
                let fields: Vec<&str> = pytext::strip(content).split('\t').collect();
                let [question, answer] = fields.as_slice() else {
                    return Err(BenchmarkError::format(
                        &file,
                        Some(line),
                        format!(
                            "expected `question<TAB>Yes|No`, found {} fields",
                            fields.len()
                        ),
                    ));
                };
                let yes = match answer.to_lowercase().as_str() {
                    "yes" => true,
                    "no" => false,
                    _ => {
                        return Err(BenchmarkError::format(
                            &file,
                            Some(line),
                            format!("the answer must be Yes or No, not `{answer}`"),
                        ))
                    }
                };
                let key = (subtask.to_string(), name.clone(), question.to_string());
                if truth.answers.insert(key.clone(), yes).is_none() {
                    truth.order.push(key);
                }
            }
        }
    }
    Ok(truth)
}

/// The ground-truth key of an answer, as `convert_answer_to_mme.py` finds it.
fn key_of(question_id: &str, prompt: &str, truth: &Truth) -> Key {
    let subtask = question_id.split('/').next().unwrap_or("").to_owned();
    let base = question_id.rsplit('/').next().unwrap_or("");
    let file = format!("{}.txt", base.split('.').next().unwrap_or(""));
    let mut question = prompt.to_owned();
    if question.contains(SHORT_ANSWER) {
        question = pytext::strip(&question.replace(SHORT_ANSWER, "")).to_owned();
    }
    if !question.contains(YES_OR_NO.trim_start()) {
        question.push_str(YES_OR_NO);
        let key = (subtask.clone(), file.clone(), question.clone());
        if !truth.answers.contains_key(&key) {
            question = question.replace(YES_OR_NO, &format!(" {YES_OR_NO}"));
        }
    }
    (subtask, file, question)
}

/// `calculation.py`'s reading of a reply (lower-cased, its line's newline kept).
fn llava_label(reply: &str) -> Option<bool> {
    first_four(&format!("{}\n", reply.to_lowercase()))
}

/// Yes when `yes` occurs within the first four characters, else no when `no`
/// does, else neither (`parse_pred_ans`' last rule, in both conventions).
fn first_four(pred: &str) -> Option<bool> {
    let prefix: String = pred.chars().take(4).collect();
    if prefix.contains("yes") {
        Some(true)
    } else if prefix.contains("no") {
        Some(false)
    } else {
        None
    }
}

/// lmms-eval's `parse_pred_ans`.
fn lmms_eval_label(reply: &str) -> Option<bool> {
    let pred = pytext::strip(&pytext::lmms_eval_reply(reply).to_lowercase()).replace('.', "");
    match pred.as_str() {
        "yes" | "y" => return Some(true),
        "no" | "n" => return Some(false),
        _ if pred.chars().count() == 1 => return None,
        _ => {}
    }
    first_four(&pred)
}

struct Scored {
    file: String,
    right: bool,
    other: bool,
    id: QuestionId,
    line: usize,
}

impl Benchmark for Mme {
    fn name(&self) -> &'static str {
        NAME
    }

    fn column(&self) -> &'static str {
        "MME-P"
    }

    fn inputs_help(&self) -> &'static str {
        "--annotations: MME_Benchmark_release_version/ (its 14 subtask directories with the Yes/No .txt files)"
    }

    fn lmms_eval(&self) -> LmmsEval {
        LmmsEval::Own
    }

    fn score(&self, inputs: &Inputs<'_>) -> Result<Outcome, BenchmarkError> {
        let root = inputs.annotations(NAME, "the MME_Benchmark_release_version directory")?;
        let truth = read_truth(root)?;
        let answers = inputs.answers;
        let mut by_subtask: HashMap<String, Vec<Scored>> = HashMap::new();
        let mut seen: HashMap<Key, usize> = HashMap::new();
        for answer in &answers.answers {
            let prompt = answers.prompt(answer)?;
            let key = key_of(answer.question_id.as_str(), prompt, &truth);
            let Some(&yes) = truth.answers.get(&key) else {
                return Err(answers.unknown(
                    answer,
                    root,
                    Some(format!(
                        "no question `{}` in {}/…/{} (with one or two spaces before \"Please\")",
                        key.2.replace(&format!(" {YES_OR_NO}"), YES_OR_NO),
                        key.0,
                        key.1
                    )),
                ));
            };
            if let Some(first_line) = seen.insert(key.clone(), answer.line) {
                return Err(BenchmarkError::DuplicateAnswer {
                    id: answer.question_id.clone(),
                    path: answers.path.clone(),
                    first_line,
                    line: answer.line,
                });
            }
            let label = match inputs.convention {
                Convention::Llava => llava_label(&answer.text),
                Convention::LmmsEval => lmms_eval_label(&answer.text),
            };
            by_subtask.entry(key.0.clone()).or_default().push(Scored {
                file: key.1.clone(),
                right: label == Some(yes),
                other: label.is_none(),
                id: answer.question_id.clone(),
                line: answer.line,
            });
        }
        let missing: Vec<QuestionId> = truth
            .order
            .iter()
            .filter(|k| !seen.contains_key(*k))
            .map(|(s, f, q)| QuestionId::new(format!("{s}/{f}: {q}")))
            .collect();
        answers.check_missing(root, missing.iter())?;

        let mut table = Table::new(["subtask", "questions", "acc", "acc+", "score"]);
        let mut subtasks = Map::new();
        let mut totals = [0.0f64; 2];
        let mut others = 0;
        if truth.absent.len() == PERCEPTION.len() + COGNITION.len() {
            return Err(BenchmarkError::format(
                root,
                None,
                "holds none of MME's subtask directories (existence, count, …, code_reasoning)",
            ));
        }
        for (category, names) in [(0, &PERCEPTION[..]), (1, &COGNITION[..])] {
            for subtask in names.iter().filter(|s| !truth.absent.contains(s)) {
                let scored = by_subtask.get(*subtask).map(Vec::as_slice).unwrap_or(&[]);
                if scored.is_empty() {
                    return Err(BenchmarkError::Unscorable {
                        benchmark: NAME,
                        reason: format!(
                            "{} holds no questions for subtask `{subtask}`",
                            root.display()
                        ),
                    });
                }
                let (acc, acc_plus, score) = match inputs.convention {
                    Convention::Llava => {
                        let pairs = image_pairs(scored, &answers.path)?;
                        let right = scored.iter().filter(|s| s.right).count();
                        let both = pairs.iter().filter(|(a, b)| a.right && b.right).count();
                        let acc = right as f64 / scored.len() as f64;
                        let acc_plus = both as f64 / pairs.len() as f64;
                        (acc, acc_plus, 0.0 + acc * 100.0 + acc_plus * 100.0)
                    }
                    Convention::LmmsEval => lmms_eval_subtask(scored),
                };
                others += scored.iter().filter(|s| s.other).count();
                totals[category] += score;
                table.row([
                    subtask.to_string(),
                    scored.len().to_string(),
                    two(100.0 * acc),
                    two(100.0 * acc_plus),
                    two(score),
                ]);
                subtasks.insert(
                    subtask.to_string(),
                    json!({"score": score, "acc": acc, "acc_plus": acc_plus, "questions": scored.len()}),
                );
            }
            table.row([
                if category == 0 {
                    "perception (of 2000)"
                } else {
                    "cognition (of 800)"
                }
                .to_owned(),
                String::new(),
                String::new(),
                String::new(),
                two(totals[category]),
            ]);
        }
        Ok(Outcome::Score(Score {
            benchmark: NAME,
            convention: inputs.convention,
            score: totals[0],
            headline:
                "perception score: acc + acc+ summed over the 10 perception subtasks, of 2000",
            unit: "points",
            metrics: into_map(json!({
                "perception": totals[0],
                "cognition": totals[1],
                "subtasks": subtasks,
                "replies_neither_yes_nor_no": others,
                "subtasks_absent": truth.absent,
            })),
            notes: if truth.absent.is_empty() {
                Vec::new()
            } else {
                vec![format!(
                    "{} of MME's 14 subtasks are absent from {} ({}): the totals are over the others, and are not MME's \
                     (its calculation.py needs all 14)",
                    truth.absent.len(),
                    root.display(),
                    truth.absent.join(", ")
                )]
            },
            table,
        }))
    }
}

/// A subtask's answers as `calculation.py` pairs them: consecutive answers in
/// file order, each pair required to be of one image.
fn image_pairs<'a>(
    scored: &'a [Scored],
    answers: &Path,
) -> Result<Vec<(&'a Scored, &'a Scored)>, BenchmarkError> {
    scored
        .chunks(2)
        .map(|pair| match pair {
            [a, b] if a.file == b.file => Ok((a, b)),
            [a, b] => Err(BenchmarkError::BadEntry {
                path: answers.to_owned(),
                id: b.id.clone(),
                message: format!(
                    "line {} follows line {} (question {}) but is about another image: MME scores an image's two \
                     answers as consecutive lines, so keep them together",
                    b.line, a.line, a.id
                ),
            }),
            [a] => Err(BenchmarkError::BadEntry {
                path: answers.to_owned(),
                id: a.id.clone(),
                message: format!("line {}: its image has one answer; MME asks two questions an image", a.line),
            }),
            _ => unreachable!("chunks of two"),
        })
        .collect()
}

/// lmms-eval's subtask score: per image (by id), acc × 100 + acc+ × 100,
/// averaged over images.
fn lmms_eval_subtask(scored: &[Scored]) -> (f64, f64, f64) {
    let mut images: Vec<(&QuestionId, Vec<bool>)> = Vec::new();
    let mut index: HashMap<&QuestionId, usize> = HashMap::new();
    for s in scored {
        let i = *index.entry(&s.id).or_insert_with(|| {
            images.push((&s.id, Vec::new()));
            images.len() - 1
        });
        images[i].1.push(s.right);
    }
    let mut total = 0.0;
    let (mut right, mut both) = (0usize, 0usize);
    for (_, scores) in &images {
        let correct = scores.iter().filter(|r| **r).count();
        let acc = correct as f64 / scores.len() as f64 * 100.0;
        let acc_plus = if correct == 2 { 100.0 } else { 0.0 };
        total += acc_plus + acc;
        right += correct;
        both += usize::from(correct == 2);
    }
    let n = images.len() as f64;
    (
        right as f64 / scored.len() as f64,
        both as f64 / n,
        total / n,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llava_reads_the_first_four_characters() {
        for (reply, label) in [
            ("Yes", Some(true)),
            ("yes.", Some(true)),
            ("eyes", Some(true)),
            (" yes", Some(true)),
            ("  yes", None),
            ("No", Some(false)),
            ("Not sure", Some(false)),
            ("know", Some(false)),
            ("Unknown", None),
            ("", None),
            ("The answer is yes", None),
        ] {
            assert_eq!(llava_label(reply), label, "{reply:?}");
        }
    }

    #[test]
    fn lmms_eval_also_reads_single_letters() {
        assert_eq!(lmms_eval_label("Y"), Some(true));
        assert_eq!(lmms_eval_label("n."), Some(false));
        assert_eq!(lmms_eval_label("x"), None);
        assert_eq!(lmms_eval_label("N.o"), Some(false));
    }
}
