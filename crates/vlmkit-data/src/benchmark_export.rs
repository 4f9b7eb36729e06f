//! The built-in eval world written as published benchmarks' files: each
//! benchmark's question file in LLaVA's format, its images, and its
//! annotation files in the official release format, so that `vlmkit eval
//! --benchmark` and `vlmkit score` run end to end offline.
//!
//! Questions are asked as the built-in data asks them: LLaVA's instruction
//! suffixes ("Answer the question using a single word or phrase.") are left out
//! where the format does not need them, since a model trained on the built-in
//! data has never seen them; the multiple-choice formats list lettered options
//! and LLaVA's option-letter instruction, as theirs do.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine;
use image::RgbImage;
use serde_json::{json, Value};

use crate::error::DataError;
use crate::shapes::{Color, Family, Quadrant, Sample, ShapesDataset};

/// LLaVA's multiple-choice instruction.
const OPTION_LETTER: &str = "Answer with the option's letter from the given choices directly.";
/// LLaVA's short-answer instruction.
const SHORT_ANSWER: &str = crate::shapes::SHORT_ANSWER;
const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

/// The benchmarks the built-in data can be written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchmarkFormat {
    Pope,
    Gqa,
    Mme,
    Sqa,
    MmBench,
    Seed,
    TextVqa,
}

impl BenchmarkFormat {
    pub const ALL: [BenchmarkFormat; 7] = [
        BenchmarkFormat::Pope,
        BenchmarkFormat::Gqa,
        BenchmarkFormat::Mme,
        BenchmarkFormat::Sqa,
        BenchmarkFormat::MmBench,
        BenchmarkFormat::Seed,
        BenchmarkFormat::TextVqa,
    ];

    /// Its name, as `vlmkit score` knows it.
    pub fn name(self) -> &'static str {
        match self {
            BenchmarkFormat::Pope => "pope",
            BenchmarkFormat::Gqa => "gqa",
            BenchmarkFormat::Mme => "mme",
            BenchmarkFormat::Sqa => "sqa",
            BenchmarkFormat::MmBench => "mmbench",
            BenchmarkFormat::Seed => "seed",
            BenchmarkFormat::TextVqa => "textvqa",
        }
    }

    /// Whether a sample of `family` becomes a question of this benchmark.
    fn takes(self, sample: &Sample) -> bool {
        match self {
            BenchmarkFormat::Pope => sample.pope.is_some(),
            BenchmarkFormat::Gqa => sample.family != Family::Describe,
            // MME asks two yes/no questions about each image: any scene will do.
            BenchmarkFormat::Mme => !sample.scene.objects.is_empty(),
            BenchmarkFormat::Sqa | BenchmarkFormat::MmBench => matches!(
                sample.family,
                Family::Relation | Family::Color | Family::Position
            ),
            BenchmarkFormat::Seed => matches!(
                sample.family,
                Family::Color | Family::Position | Family::Count | Family::Ocr
            ),
            BenchmarkFormat::TextVqa => sample.family == Family::Ocr,
        }
    }
}

impl fmt::Display for BenchmarkFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BenchmarkFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BenchmarkFormat::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                let known: Vec<_> = BenchmarkFormat::ALL.iter().map(|b| b.name()).collect();
                format!(
                    "the built-in data is written as {}, not `{s}`",
                    known.join(", ")
                )
            })
    }
}

/// What [`export_benchmark`] wrote: the paths `vlmkit eval --benchmark` and
/// `vlmkit score` take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchmarkExport {
    pub benchmark: BenchmarkFormat,
    /// `--questions`.
    pub questions: PathBuf,
    /// `--images`.
    pub images: PathBuf,
    /// `--annotations`.
    pub annotations: PathBuf,
    /// Questions written.
    pub count: usize,
    /// The built-in samples they came from, in order (POPE's agree one to one).
    pub sample_ids: Vec<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_text(path: &Path, text: &str) -> Result<(), DataError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    vlmkit_core::fsutil::write_atomic(path, text.as_bytes()).map_err(io(path))
}

fn write_json_lines(path: &Path, rows: &[Value]) -> Result<(), DataError> {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    write_text(path, &text)
}

fn write_png(image: &RgbImage, path: &Path) -> Result<(), DataError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    vlmkit_plot::io::save_png_atomic(image, path)?;
    Ok(())
}

fn png_base64(image: &RgbImage) -> String {
    let mut bytes = Cursor::new(Vec::new());
    image
        .write_to(&mut bytes, image::ImageFormat::Png)
        .expect("encoding a PNG in memory");
    base64::engine::general_purpose::STANDARD.encode(bytes.into_inner())
}

/// Four options for a sample's multiple-choice question, the answer among
/// them at a position the sample's index decides: the family's own options
/// where it has them, else the answer and the next values of its kind.
fn options_of(sample: &Sample, count: usize) -> (Vec<String>, usize) {
    let pool: Vec<String> = match sample.family {
        Family::Relation => sample.options.clone(),
        Family::Color => Color::ALL.iter().map(|c| c.name().to_owned()).collect(),
        Family::Position => Quadrant::ALL.iter().map(|q| q.name().to_owned()).collect(),
        Family::Count => (0..10).map(|n| n.to_string()).collect(),
        Family::Ocr => ('a'..='z').map(String::from).collect(),
        _ => vec![sample.answer.clone()],
    };
    let at = pool.iter().position(|o| *o == sample.answer).unwrap_or(0);
    let n = count.min(pool.len());
    // The answer and the values after it, rotated so the answer's slot varies.
    let mut options: Vec<String> = (0..n)
        .map(|k| pool[(at + k) % pool.len()].clone())
        .collect();
    let shift = (sample.index as usize) % n;
    options.rotate_right(shift);
    (options, shift)
}

/// The first `count` questions the eval split's samples give `benchmark`.
fn samples_for(
    dataset: &ShapesDataset,
    benchmark: BenchmarkFormat,
    count: usize,
) -> Result<Vec<Sample>, DataError> {
    let limit = (count as u64).saturating_mul(200).max(10_000);
    let mut samples = Vec::with_capacity(count);
    let mut index = 0;
    while samples.len() < count {
        if index >= limit {
            return Err(DataError::Unusable {
                example: benchmark.name().to_owned(),
                reason: format!(
                    "the built-in data gave only {} {benchmark} questions in {limit} samples: its family weights leave it none",
                    samples.len()
                ),
            });
        }
        let sample = dataset.get(index);
        if benchmark.takes(&sample) {
            samples.push(sample);
        }
        index += 1;
    }
    Ok(samples)
}

/// Writes `count` questions of `dataset` as `benchmark` into `out`.
pub fn export_benchmark(
    dataset: &ShapesDataset,
    benchmark: BenchmarkFormat,
    count: usize,
    out: &Path,
) -> Result<BenchmarkExport, DataError> {
    let samples = samples_for(dataset, benchmark, count)?;
    let mut export = BenchmarkExport {
        benchmark,
        questions: PathBuf::new(),
        images: out.to_path_buf(),
        annotations: PathBuf::new(),
        count: samples.len(),
        sample_ids: samples.iter().map(|s| s.id.clone()).collect(),
    };
    match benchmark {
        BenchmarkFormat::Pope => pope(&samples, out, &mut export)?,
        BenchmarkFormat::Gqa => gqa(&samples, out, &mut export)?,
        BenchmarkFormat::Mme => mme(&samples, out, &mut export)?,
        BenchmarkFormat::Sqa => sqa(&samples, out, &mut export)?,
        BenchmarkFormat::MmBench => mmbench(&samples, out, &mut export)?,
        BenchmarkFormat::Seed => seed(&samples, out, &mut export)?,
        BenchmarkFormat::TextVqa => textvqa(&samples, out, &mut export)?,
    }
    Ok(export)
}

/// POPE: `coco/coco_pope_<sampler>.json` (its own numbering, `label`),
/// LLaVA's `llava_pope_test.jsonl` (`category`), `images/`.
fn pope(samples: &[Sample], out: &Path, export: &mut BenchmarkExport) -> Result<(), DataError> {
    let mut labels: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    let mut questions = Vec::new();
    for (k, sample) in samples.iter().enumerate() {
        let image = format!("{}.png", sample.id);
        write_png(&sample.image, &out.join("images").join(&image))?;
        let sampler = sample.pope.expect("POPE takes existence questions").name();
        let rows = labels.entry(sampler).or_default();
        rows.push(json!({"question_id": rows.len() + 1, "image": image, "text": sample.question, "label": sample.answer}));
        questions.push(json!({"question_id": k + 1, "image": image, "text": sample.question, "category": sampler}));
    }
    for (sampler, rows) in &labels {
        write_json_lines(
            &out.join("coco").join(format!("coco_pope_{sampler}.json")),
            rows,
        )?;
    }
    export.questions = out.join("llava_pope_test.jsonl");
    write_json_lines(&export.questions, &questions)?;
    export.images = out.join("images");
    export.annotations = out.join("coco");
    Ok(())
}

/// GQA's structural and semantic types for a built-in family.
fn gqa_types(family: Family) -> (&'static str, &'static str) {
    match family {
        Family::Existence => ("verify", "obj"),
        Family::Relation => ("choose", "rel"),
        Family::Position => ("query", "rel"),
        Family::Count => ("query", "obj"),
        Family::Ocr => ("query", "attr"),
        _ => ("query", "attr"),
    }
}

/// GQA: `testdev_balanced_questions.json` (all balanced, types and a global
/// group per open family), LLaVA's `llava_gqa_testdev_balanced.jsonl`, `images/`.
fn gqa(samples: &[Sample], out: &Path, export: &mut BenchmarkExport) -> Result<(), DataError> {
    let mut annotations = serde_json::Map::new();
    let mut questions = Vec::new();
    for (k, sample) in samples.iter().enumerate() {
        let id = format!("{}", 20_000_000 + k);
        let image = format!("{}.png", sample.id);
        write_png(&sample.image, &out.join("images").join(&image))?;
        let (structural, semantic) = gqa_types(sample.family);
        annotations.insert(
            id.clone(),
            json!({
                "question": sample.question,
                "answer": sample.answer,
                "fullAnswer": sample.answer,
                "imageId": sample.id,
                "isBalanced": true,
                "types": {"structural": structural, "semantic": semantic, "detailed": sample.family.name()},
                "semantic": [
                    {"operation": "select", "dependencies": [], "argument": "scene"},
                    {"operation": format!("{structural} {}", sample.family.name()), "dependencies": [0], "argument": ""}
                ],
                "groups": {"global": (structural == "query").then(|| sample.family.name()), "local": sample.family.name()},
                "entailed": [],
                "equivalent": [id],
                "annotations": {"question": {}, "answer": {}, "fullAnswer": {}},
            }),
        );
        questions.push(json!({"question_id": id, "image": image, "text": sample.question, "category": "default"}));
    }
    export.annotations = out.join("testdev_balanced_questions.json");
    write_text(&export.annotations, &Value::Object(annotations).to_string())?;
    export.questions = out.join("llava_gqa_testdev_balanced.jsonl");
    write_json_lines(&export.questions, &questions)?;
    export.images = out.join("images");
    Ok(())
}

/// MME's `existence` subtask: per image a yes question (an object it shows)
/// and a no question (one it does not), `<stem>.txt` beside `<stem>.png` in
/// `MME_Benchmark_release_version/existence/`; LLaVA's `llava_mme.jsonl`.
fn mme(samples: &[Sample], out: &Path, export: &mut BenchmarkExport) -> Result<(), DataError> {
    use crate::shapes::Shape;
    let release = out.join("MME_Benchmark_release_version");
    let mut questions = Vec::new();
    for sample in samples {
        let stem = &sample.id;
        write_png(
            &sample.image,
            &release.join("existence").join(format!("{stem}.png")),
        )?;
        let present = sample.scene.objects[0];
        let absent = Color::ALL
            .iter()
            .flat_map(|&c| Shape::ALL.iter().map(move |&s| (c, s)))
            .find(|&(c, s)| sample.scene.find(c, s).is_none())
            .expect("a scene holds fewer objects than there are colours and shapes");
        let asked = [
            (
                crate::shapes::existence_question(present.color, present.shape),
                "Yes",
            ),
            (crate::shapes::existence_question(absent.0, absent.1), "No"),
        ];
        let truth: String = asked
            .iter()
            .map(|(q, a)| format!("{q} Please answer yes or no.\t{a}\n"))
            .collect();
        write_text(
            &release.join("existence").join(format!("{stem}.txt")),
            &truth,
        )?;
        for (question, _) in &asked {
            let id = format!("existence/{stem}.png");
            questions.push(
                json!({"question_id": id, "image": id, "text": question, "category": "existence"}),
            );
        }
    }
    export.questions = out.join("llava_mme.jsonl");
    write_json_lines(&export.questions, &questions)?;
    export.images = release.clone();
    export.annotations = release;
    export.count = questions.len();
    Ok(())
}

/// ScienceQA: `problems.json`, `pid_splits.json` (split `test`), LLaVA's
/// `llava_test_CQM-A.json`, `images/test/<pid>/image.png`.
fn sqa(samples: &[Sample], out: &Path, export: &mut BenchmarkExport) -> Result<(), DataError> {
    let mut problems = serde_json::Map::new();
    let mut conversations = Vec::new();
    let mut test = Vec::new();
    for (k, sample) in samples.iter().enumerate() {
        let pid = format!("{}", 1000 + k);
        write_png(
            &sample.image,
            &out.join("images/test").join(&pid).join("image.png"),
        )?;
        let (choices, answer) = options_of(sample, 4);
        let options: Vec<String> = choices
            .iter()
            .enumerate()
            .map(|(i, c)| format!("({}) {c}", LETTERS[i]))
            .collect();
        problems.insert(
            pid.clone(),
            json!({"question": sample.question, "choices": choices, "answer": answer, "hint": "", "image": "image.png",
                   "task": "closed choice", "grade": "grade1", "subject": "built-in", "topic": sample.family.name(),
                   "category": sample.family.name(), "skill": sample.family.name(), "lecture": "", "solution": "", "split": "test"}),
        );
        let value = format!(
            "<image>\nContext: N/A\nQuestion: {}\nOptions: {}",
            sample.question,
            options.join(" ")
        );
        conversations.push(json!({"id": pid, "image": format!("{pid}/image.png"),
            "conversations": [{"from": "human", "value": value}, {"from": "gpt", "value": format!("The answer is {}.", LETTERS[answer])}]}));
        test.push(pid);
    }
    write_text(
        &out.join("problems.json"),
        &Value::Object(problems).to_string(),
    )?;
    write_text(
        &out.join("pid_splits.json"),
        &json!({"train": [], "val": [], "test": test}).to_string(),
    )?;
    export.questions = out.join("llava_test_CQM-A.json");
    write_text(&export.questions, &Value::Array(conversations).to_string())?;
    export.images = out.join("images/test");
    export.annotations = out.to_path_buf();
    Ok(())
}

/// MMBench: the dev TSV with every question's circular copies (index + k ×
/// 1,000,000, options rotated), base64 PNG images.
fn mmbench(samples: &[Sample], out: &Path, export: &mut BenchmarkExport) -> Result<(), DataError> {
    let header = [
        "index",
        "question",
        "hint",
        "A",
        "B",
        "C",
        "D",
        "answer",
        "category",
        "image",
        "source",
        "l2-category",
        "comment",
        "split",
    ];
    let mut rows = vec![header.join("\t")];
    let mut written = 0;
    for (k, sample) in samples.iter().enumerate() {
        let (options, answer) = options_of(sample, 4);
        let (category, l2) = match sample.family {
            Family::Relation => ("spatial_relationship", "relation_reasoning"),
            Family::Color => (
                "attribute_recognition",
                "finegrained_perception (instance-level)",
            ),
            _ => (
                "object_localization",
                "finegrained_perception (instance-level)",
            ),
        };
        let image = png_base64(&sample.image);
        for copy in 0..options.len() {
            let mut rotated = options.clone();
            rotated.rotate_left(copy);
            let gold = (answer + options.len() - copy) % options.len();
            let mut cells: Vec<String> = rotated.clone();
            cells.resize(4, String::new());
            let index = k + copy * 1_000_000;
            rows.push(
                [
                    index.to_string(),
                    sample.question.clone(),
                    String::new(),
                    cells[0].clone(),
                    cells[1].clone(),
                    cells[2].clone(),
                    cells[3].clone(),
                    LETTERS[gold].to_owned(),
                    category.to_owned(),
                    image.clone(),
                    "vlmkit built-in".to_owned(),
                    l2.to_owned(),
                    String::new(),
                    "dev".to_owned(),
                ]
                .join("\t"),
            );
            written += 1;
        }
    }
    export.questions = out.join("mmbench_dev_20230712.tsv");
    write_text(&export.questions, &(rows.join("\n") + "\n"))?;
    export.annotations = export.questions.clone();
    export.images = out.to_path_buf();
    export.count = written;
    Ok(())
}

/// SEED-Bench: `SEED-Bench.json` (image questions, four choices),
/// LLaVA's `llava-seed-bench.jsonl`, `SEED-Bench-image/`.
fn seed(samples: &[Sample], out: &Path, export: &mut BenchmarkExport) -> Result<(), DataError> {
    let types = json!({"Scene Understanding": 1, "Instance Identity": 2, "Instance Attributes": 3, "Instance Location": 4,
        "Instances Counting": 5, "Spatial Relation": 6, "Instance Interaction": 7, "Visual Reasoning": 8,
        "Text Understanding": 9, "Action Recognition": 10, "Action Prediction": 11, "Procedure Understanding": 12});
    let mut annotations = Vec::new();
    let mut questions = Vec::new();
    for (k, sample) in samples.iter().enumerate() {
        let data_id = format!("{}.png", sample.id);
        write_png(&sample.image, &out.join("SEED-Bench-image").join(&data_id))?;
        let (options, answer) = options_of(sample, 4);
        let (type_id, type_name) = match sample.family {
            Family::Color => (3, "Instance Attributes"),
            Family::Position => (4, "Instance Location"),
            Family::Count => (5, "Instances Counting"),
            _ => (9, "Text Understanding"),
        };
        let id = 100_000 + k;
        let mut question = json!({"answer": LETTERS[answer], "data_id": data_id, "data_type": "image",
            "question": sample.question, "question_id": id.to_string(), "question_type_id": type_id});
        for (i, option) in options.iter().enumerate() {
            question[format!("choice_{}", LETTERS[i].to_lowercase())] = json!(option);
        }
        annotations.push(question);
        let listed: String = options
            .iter()
            .enumerate()
            .map(|(i, o)| format!("\n{}. {o}", LETTERS[i]))
            .collect();
        questions.push(json!({"image": format!("SEED-Bench-image/{data_id}"), "text": format!("{}{listed}\n{OPTION_LETTER}", sample.question),
            "category": type_name, "question_id": id}));
    }
    export.annotations = out.join("SEED-Bench.json");
    write_text(
        &export.annotations,
        &json!({"questions": annotations, "question_type": types}).to_string(),
    )?;
    export.questions = out.join("llava-seed-bench.jsonl");
    write_json_lines(&export.questions, &questions)?;
    export.images = out.to_path_buf();
    Ok(())
}

/// TextVQA: `TextVQA_0.5.1_val.json` (ten reference answers each, all the
/// letter), LLaVA-style `llava_textvqa_val_v051_ocr.jsonl` without OCR tokens
/// (the question and the short-answer line: the two-line prompt the official
/// scorer reads back), `train_images/`.
fn textvqa(samples: &[Sample], out: &Path, export: &mut BenchmarkExport) -> Result<(), DataError> {
    let mut data = Vec::new();
    let mut questions = Vec::new();
    for (k, sample) in samples.iter().enumerate() {
        let image_id = format!("{:016x}", 0xb117_0000_0000_0000u64 + k as u64);
        write_png(
            &sample.image,
            &out.join("train_images").join(format!("{image_id}.png")),
        )?;
        data.push(json!({"question_id": k, "image_id": image_id, "question": sample.question,
            "answers": vec![sample.answer.clone(); 10], "set_name": "val", "image_classes": [], "flickr_original_url": "",
            "flickr_300k_url": "", "image_width": sample.image.width(), "image_height": sample.image.height()}));
        questions.push(
            json!({"question_id": image_id, "image": format!("{image_id}.png"),
            "text": format!("{}\n{SHORT_ANSWER}", sample.question)}),
        );
    }
    export.annotations = out.join("TextVQA_0.5.1_val.json");
    write_text(&export.annotations, &json!({"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data}).to_string())?;
    export.questions = out.join("llava_textvqa_val_v051_ocr.jsonl");
    write_json_lines(&export.questions, &questions)?;
    export.images = out.join("train_images");
    Ok(())
}
