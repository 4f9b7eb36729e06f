//! vlmkit's scores against the official scripts' on the same files.
//!
//! `tests/fixtures/benchmarks/` holds each benchmark's release files in the
//! official formats and an answers file full of the replies that break scorers
//! (scripts/make-benchmark-fixtures.py); `expected.json` holds what the
//! official scripts (LLaVA's, MME's, GQA's, MMMU's, VLMEvalKit's, lmms-eval's)
//! gave on them, each entry naming its script and commit (docs/benchmarks.md
//! says how they were run). A number printed rounded is compared rounded the
//! same way; an unrounded one must agree to the last few bits.

use std::path::{Path, PathBuf};

use serde_json::Value;
use vlmkit_benchmarks::{AnswerFile, BenchmarkRegistry, Convention, Inputs, Outcome, Score};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/benchmarks")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json parses")
}

/// The release files each benchmark's fixture scores against: (annotations, questions).
fn inputs_of(benchmark: &str) -> (PathBuf, Option<PathBuf>) {
    let dir = fixtures().join(benchmark);
    match benchmark {
        "pope" => (dir.join("coco"), Some(dir.join("llava_pope_test.jsonl"))),
        "gqa" => (dir.join("testdev_balanced_questions.json"), None),
        "sqa" => (dir.clone(), None),
        "textvqa" => (dir.join("TextVQA_0.5.1_val.json"), None),
        "vizwiz" => (dir.join("val.json"), None),
        "vqav2" => (dir.join("v2_mscoco_val2014_annotations.json"), None),
        "mme" => (dir.join("MME_Benchmark_release_version"), None),
        "mmbench" => (dir.join("mmbench_dev_20230712.tsv"), None),
        "seed" => (dir.join("SEED-Bench.json"), None),
        "mmmu" => (dir.join("answer_dict_val.json"), None),
        "mmvet" => (dir.join("mm-vet.json"), None),
        other => panic!("no fixture for {other}"),
    }
}

fn score(benchmark: &str, convention: Convention, answers_file: &str) -> Score {
    let (annotations, questions) = inputs_of(benchmark);
    let answers = AnswerFile::read(fixtures().join(benchmark).join(answers_file)).expect("answers");
    let inputs = Inputs {
        answers: &answers,
        annotations: Some(&annotations),
        questions: questions.as_deref(),
        convention,
    };
    match BenchmarkRegistry::default().score(benchmark, &inputs) {
        Ok(Outcome::Score(score)) => score,
        Ok(Outcome::Submission(_)) => panic!("{benchmark}: a submission, not a score"),
        Err(e) => panic!("{benchmark} ({convention}): {e}"),
    }
}

/// `ours` agrees with `official`: equal when rounded to `decimals`, else to 1e-12 relative.
#[track_caller]
fn agree(what: &str, ours: f64, official: f64, decimals: Option<u64>) {
    match decimals {
        Some(d) => assert_eq!(
            format!("{ours:.*}", d as usize),
            format!("{official:.*}", d as usize),
            "{what}: vlmkit {ours}, official {official} (printed with {d} decimals)"
        ),
        None => assert!(
            (ours - official).abs() <= 1e-12 * official.abs().max(1.0),
            "{what}: vlmkit {ours}, official {official}"
        ),
    }
}

fn number(value: &Value, path: &[&str]) -> f64 {
    let mut v = value;
    for key in path {
        v = &v[*key];
    }
    v.as_f64()
        .unwrap_or_else(|| panic!("no number at {path:?} in {value}"))
}

fn check_headline(benchmark: &str, convention: Convention) -> (Score, Value) {
    let all = expected();
    let official = all[benchmark][convention.name()].clone();
    assert!(
        official.is_object(),
        "expected.json has no {benchmark}/{convention}"
    );
    // An entry may name its own answers file (TextVQA as lmms-eval asks it).
    let answers_file = official["answers"].as_str().unwrap_or("answers.jsonl");
    let ours = score(benchmark, convention, answers_file);
    let decimals = official["decimals"].as_u64();
    agree(
        &format!("{benchmark} ({convention}) headline"),
        ours.score,
        number(&official, &["score"]),
        decimals,
    );
    assert_eq!(ours.convention, convention);
    (ours, official)
}

#[test]
fn pope_is_eval_pope_py_per_sampler_and_lmms_eval_pooled() {
    let (ours, official) = check_headline("pope", Convention::Llava);
    for sampler in ["adversarial", "popular", "random"] {
        for metric in ["accuracy", "precision", "recall", "f1", "yes_ratio"] {
            agree(
                &format!("pope {sampler} {metric}"),
                number(
                    &Value::Object(ours.metrics.clone()),
                    &["samplers", sampler, metric],
                ),
                number(&official, &["metrics", "samplers", sampler, metric]),
                None,
            );
        }
    }
    let (ours, official) = check_headline("pope", Convention::LmmsEval);
    let ours = Value::Object(ours.metrics);
    for metric in ["accuracy", "precision", "recall", "f1", "yes_ratio"] {
        agree(
            &format!("pope pooled {metric}"),
            number(&ours, &["pooled", metric]),
            number(&official, &["metrics", "pooled", metric]),
            None,
        );
        for sampler in ["adversarial", "popular", "random"] {
            agree(
                &format!("pope lmms-eval {sampler} {metric}"),
                number(&ours, &["samplers", sampler, metric]),
                number(&official, &["metrics", "samplers", sampler, metric]),
                None,
            );
        }
    }
}

#[test]
fn gqa_is_gqa_eval_py_after_llavas_conversion() {
    let (ours, official) = check_headline("gqa", Convention::Llava);
    let ours = Value::Object(ours.metrics);
    for metric in ["binary", "open", "distribution"] {
        agree(
            &format!("gqa {metric}"),
            number(&ours, &[metric]),
            number(&official, &["metrics", metric]),
            Some(2),
        );
    }
    let printed = official["metrics"]["printed_types"]
        .as_object()
        .expect("types");
    let mut checked = 0;
    for (name, value) in printed {
        for group in ["per_structural_type", "per_semantic_type"] {
            if let Some(accuracy) = ours[group][name]["accuracy"].as_f64() {
                agree(
                    &format!("gqa {group} {name}"),
                    accuracy,
                    value.as_f64().unwrap(),
                    Some(2),
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 8, "only {checked} type accuracies compared");
    check_headline("gqa", Convention::LmmsEval);
}

#[test]
fn sqa_is_eval_science_qa_py() {
    let (ours, official) = check_headline("sqa", Convention::Llava);
    let ours = Value::Object(ours.metrics);
    agree(
        "sqa accuracy",
        number(&ours, &["accuracy"]),
        number(&official, &["metrics", "accuracy"]),
        None,
    );
    assert_eq!(ours["correct"], official["metrics"]["correct"]);
    check_headline("sqa", Convention::LmmsEval);
}

#[test]
fn textvqa_is_eval_textvqa_py() {
    check_headline("textvqa", Convention::Llava);
    check_headline("textvqa", Convention::LmmsEval);
}

#[test]
fn vizwiz_and_vqav2_val_are_m4c_soft_accuracy() {
    let (ours, official) = check_headline("vizwiz", Convention::Llava);
    let ours = Value::Object(ours.metrics);
    for metric in ["answerable_accuracy", "unanswerable_accuracy"] {
        agree(
            &format!("vizwiz {metric}"),
            number(&ours, &[metric]),
            number(&official, &["metrics", metric]),
            None,
        );
    }
    check_headline("vizwiz", Convention::LmmsEval);
    let (ours, official) = check_headline("vqav2", Convention::Llava);
    let ours = Value::Object(ours.metrics);
    for (answer_type, value) in official["metrics"]["per_answer_type"].as_object().unwrap() {
        agree(
            &format!("vqav2 {answer_type}"),
            number(&ours, &["per_answer_type", answer_type]),
            value.as_f64().unwrap(),
            None,
        );
    }
}

#[test]
fn mme_is_llavas_conversion_and_calculation_py() {
    let (ours, official) = check_headline("mme", Convention::Llava);
    let ours = Value::Object(ours.metrics);
    agree(
        "mme cognition",
        number(&ours, &["cognition"]),
        number(&official, &["metrics", "cognition"]),
        None,
    );
    for (subtask, value) in official["metrics"]["subtasks"].as_object().unwrap() {
        agree(
            &format!("mme {subtask}"),
            number(&ours, &["subtasks", subtask, "score"]),
            value.as_f64().unwrap(),
            None,
        );
    }
    let (ours, official) = check_headline("mme", Convention::LmmsEval);
    agree(
        "mme lmms-eval cognition",
        number(&Value::Object(ours.metrics), &["cognition"]),
        number(&official, &["metrics", "cognition"]),
        None,
    );
}

#[test]
fn mmbench_is_vlmevalkit_circular_exact_matching() {
    let (ours, official) = check_headline("mmbench", Convention::Llava);
    let ours = Value::Object(ours.metrics);
    for (group, ours_group) in [
        ("per_l2_category", "per_l2_category"),
        ("per_category", "per_category"),
    ] {
        for (name, value) in official["metrics"][group].as_object().unwrap() {
            agree(
                &format!("mmbench {name}"),
                number(&ours, &[ours_group, name]),
                value.as_f64().unwrap(),
                Some(4),
            );
        }
    }
}

#[test]
fn seed_is_convert_seed_for_submission_py() {
    let (ours, official) = check_headline("seed", Convention::Llava);
    let ours = Value::Object(ours.metrics);
    // The script prints every type, the unanswered video ones as 0.00; vlmkit
    // scores the image questions alone when no video question is answered.
    let printed = official["metrics"]["printed_types"].as_object().unwrap();
    let image_types: Vec<_> = printed
        .iter()
        .filter(|(name, _)| !ours["per_question_type"][name.as_str()].is_null())
        .collect();
    assert_eq!(image_types.len(), 3);
    for (name, value) in image_types {
        agree(
            &format!("seed {name}"),
            number(&ours, &["per_question_type", name, "accuracy"]),
            value.as_f64().unwrap(),
            Some(2),
        );
    }
    check_headline("seed", Convention::LmmsEval);
}

#[test]
fn mmmu_is_the_mmmu_evaluator_with_its_random_draws() {
    let (ours, official) = check_headline("mmmu", Convention::Llava);
    let ours = Value::Object(ours.metrics);
    for (subject, value) in official["metrics"]["per_subject"].as_object().unwrap() {
        agree(
            &format!("mmmu {subject}"),
            number(&ours, &["per_subject", subject, "accuracy"]),
            value.as_f64().unwrap(),
            None,
        );
    }
    assert!(
        ours["random_letters"].as_u64().unwrap() >= 2,
        "the fixture exercises the random fallback"
    );
}

#[test]
fn submission_files_are_the_conversion_scripts_files() {
    let all = expected();
    for (benchmark, dir, annotations, questions) in [
        (
            "vizwiz",
            "vizwiz/test",
            "test.json",
            Some("llava_test.jsonl"),
        ),
        (
            "vqav2",
            "vqav2/test",
            "llava_vqav2_mscoco_test2015.jsonl",
            None,
        ),
        ("mmvet", "mmvet", "mm-vet.json", None),
    ] {
        let dir = fixtures().join(dir);
        let answers = AnswerFile::read(dir.join("answers.jsonl")).unwrap();
        let annotations = dir.join(annotations);
        let questions = questions.map(|q| dir.join(q));
        let inputs = Inputs {
            answers: &answers,
            annotations: Some(&annotations),
            questions: questions.as_deref(),
            convention: Convention::Llava,
        };
        let Ok(Outcome::Submission(submission)) =
            BenchmarkRegistry::default().score(benchmark, &inputs)
        else {
            panic!("{benchmark}: expected a submission file");
        };
        let ours: Value = serde_json::from_slice(&submission.contents).unwrap();
        assert_eq!(
            ours, all[benchmark]["submission"]["submission"],
            "{benchmark} submission"
        );
        assert_eq!(submission.file_name, "answers.json");
    }
}
