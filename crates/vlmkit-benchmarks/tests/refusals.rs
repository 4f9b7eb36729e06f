//! Inputs that would give a number other than the benchmark's are refused, with
//! a message naming the file and the question: never a silently shorter
//! denominator, never answers scored against the wrong labels.

use std::path::{Path, PathBuf};

use vlmkit_benchmarks::{AnswerFile, BenchmarkRegistry, Convention, Inputs};

fn fixture(benchmark: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/benchmarks")
        .join(benchmark)
}

/// Copies a benchmark's fixture to a temporary directory, lets `edit` change
/// it, and returns the error of scoring it.
fn refusal(
    benchmark: &str,
    annotations: &str,
    questions: Option<&str>,
    edit: impl FnOnce(&Path),
) -> String {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture(benchmark), dir.path());
    edit(dir.path());
    let annotations = dir.path().join(annotations);
    let questions = questions.map(|q| dir.path().join(q));
    let outcome = AnswerFile::read(dir.path().join("answers.jsonl")).and_then(|answers| {
        BenchmarkRegistry::default().score(
            benchmark,
            &Inputs {
                answers: &answers,
                annotations: Some(&annotations),
                questions: questions.as_deref(),
                convention: Convention::Llava,
            },
        )
    });
    match outcome {
        Ok(_) => panic!("{benchmark}: the edited input was scored"),
        Err(e) => e
            .to_string()
            .replace(&dir.path().display().to_string(), "<dir>"),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn edit_lines(path: &Path, edit: impl FnOnce(&mut Vec<String>)) {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    edit(&mut lines);
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn a_missing_answer_is_named() {
    let message = refusal("gqa", "testdev_balanced_questions.json", None, |dir| {
        edit_lines(&dir.join("answers.jsonl"), |l| {
            l.remove(4);
        })
    });
    assert_eq!(
        message,
        "<dir>/answers.jsonl: no answer for question 205 of <dir>/testdev_balanced_questions.json"
    );
    let message = refusal("sqa", "", None, |dir| {
        edit_lines(&dir.join("answers.jsonl"), |l| l.truncate(8))
    });
    assert_eq!(message, "<dir>/answers.jsonl: no answer for question 108 of <dir>/pid_splits.json (3 questions have none)");
}

#[test]
fn a_second_answer_is_named_with_both_lines() {
    let message = refusal("sqa", "", None, |dir| {
        edit_lines(&dir.join("answers.jsonl"), |l| {
            let first = l[1].clone();
            l.push(first);
        })
    });
    assert_eq!(
        message,
        "<dir>/answers.jsonl:12: a second answer for question 101 (the first is on line 2)"
    );
}

#[test]
fn an_answer_to_an_unknown_question_is_named() {
    let message = refusal("seed", "SEED-Bench.json", None, |dir| {
        edit_lines(&dir.join("answers.jsonl"), |l| {
            l.push(r#"{"question_id": 999, "prompt": "?", "text": "A"}"#.into())
        })
    });
    assert_eq!(message, "<dir>/answers.jsonl:13: an answer for question 999, which <dir>/SEED-Bench.json does not hold");
    let message = refusal("sqa", "", None, |dir| {
        edit_lines(&dir.join("answers.jsonl"), |l| {
            l.push(r#"{"question_id": "900", "prompt": "?", "text": "A"}"#.into())
        })
    });
    assert_eq!(
        message,
        "<dir>/answers.jsonl:12: an answer for question 900, which <dir>/pid_splits.json does not hold (split `test`)"
    );
}

#[test]
fn pope_answers_and_labels_must_pair_up() {
    let message = refusal("pope", "coco", Some("llava_pope_test.jsonl"), |dir| {
        edit_lines(&dir.join("coco/coco_pope_random.json"), |l| {
            l.pop();
        })
    });
    assert_eq!(
        message,
        "answers to `random` questions: <dir>/answers.jsonl has 6, <dir>/coco/coco_pope_random.json has 5"
    );
    let message = refusal("pope", "coco", Some("llava_pope_test.jsonl"), |dir| {
        edit_lines(&dir.join("answers.jsonl"), |l| l.swap(0, 1))
    });
    assert!(
        message.starts_with("<dir>/answers.jsonl: question 2: line 1: it is `adversarial` answer 1 in file order, about image COCO_val2014_000000000002.jpg, but label 1"),
        "{message}"
    );
}

#[test]
fn mme_answers_of_an_image_must_be_together() {
    let message = refusal("mme", "MME_Benchmark_release_version", None, |dir| {
        edit_lines(&dir.join("answers.jsonl"), |l| l.swap(1, 2))
    });
    assert!(message.contains("is about another image"), "{message}");
    assert!(
        message.starts_with(
            "<dir>/answers.jsonl: question existence/000000008277.png: line 2 follows line 1 \
             (question existence/000000006040.png)"
        ),
        "{message}"
    );
    let message = refusal("mme", "MME_Benchmark_release_version", None, |dir| {
        edit_lines(&dir.join("answers.jsonl"), |l| {
            l[0] = l[0].replace("red thing", "blue thing");
        })
    });
    assert!(
        message.contains(
            "no question `Is there a blue thing in this existence image? Please answer yes or no.`"
        ),
        "{message}"
    );
}

#[test]
fn files_that_are_not_what_they_should_be_are_refused_with_the_line() {
    let message = refusal("gqa", "testdev_balanced_questions.json", None, |dir| {
        edit_lines(&dir.join("answers.jsonl"), |l| l[2] = "{not json".into())
    });
    assert!(
        message.starts_with("<dir>/answers.jsonl:3: not JSON"),
        "{message}"
    );
    let message = refusal("gqa", "testdev_balanced_questions.json", None, |dir| {
        edit_lines(&dir.join("answers.jsonl"), |l| {
            l[0] = r#"{"question_id": "201", "text": 7}"#.into()
        })
    });
    assert_eq!(
        message,
        "<dir>/answers.jsonl:1: `text` must be a string, not 7"
    );
    let message = refusal("textvqa", "TextVQA_0.5.1_val.json", None, |dir| {
        edit_lines(&dir.join("answers.jsonl"), |l| {
            l[0] = r#"{"question_id": "0a1b", "prompt": "one line only", "text": "2"}"#.into()
        })
    });
    assert!(
        message.starts_with(
            "<dir>/answers.jsonl:1: question 0a1b: a prompt of none of eval_textvqa.py's shapes"
        ),
        "{message}"
    );
    let message = refusal("mmmu", "answer_dict_val.json", None, |dir| {
        edit_lines(&dir.join("answers.jsonl"), |l| {
            l[0] = r#"{"question_id": "validation_Art_1", "text": "A", "options": [1, 2]}"#.into()
        })
    });
    assert_eq!(
        message,
        "<dir>/answers.jsonl:1: `options` must be a list of 1 to 26 strings"
    );
}

#[test]
fn the_lmms_eval_convention_is_refused_where_it_cannot_be_reproduced() {
    let answers = AnswerFile::read(fixture("mmbench").join("answers.jsonl")).unwrap();
    let annotations = fixture("mmbench").join("mmbench_dev_20230712.tsv");
    let err = BenchmarkRegistry::default()
        .score(
            "mmbench",
            &Inputs {
                answers: &answers,
                annotations: Some(&annotations),
                questions: None,
                convention: Convention::LmmsEval,
            },
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "`mmbench` is scored only by LLaVA's rule: lmms-eval's mmbench_en_dev sends"
        ),
        "{err}"
    );
}
