use super::*;
use crate::fixture::{write_random_bert, TinyBert};

const WORDS: [&str; 12] = [
    "what", "color", "is", "the", "circle", "square", "left", "of", "how", "many", "are", "there",
];

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_random_bert(dir.path(), &WORDS, &TinyBert::default()).unwrap();
    dir
}

fn texts(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn encodes_one_vector_per_query() {
    let dir = fixture();
    let enc = SentenceEncoder::load(dir.path(), None).unwrap();
    assert_eq!(enc.hidden_size(), 24);
    assert_eq!(enc.pooling(), Pooling::Mean);
    assert!(!enc.normalizes());
    let q = texts(&["What color is the circle?", "How many squares are there?"]);
    let v = enc.encode(&q, &Device::Cpu, DType::F64).unwrap();
    assert_eq!(v.dims(), &[2, 24]);
    assert_eq!(v.dtype(), DType::F64);
    let v = rows(&enc.encode(&q, &Device::Cpu, DType::F32).unwrap());
    assert!(
        max_diff(&v[0], &v[1]) > 1e-3,
        "different queries, same vector"
    );
    let again = rows(&enc.encode(&q, &Device::Cpu, DType::F32).unwrap());
    assert_eq!(v, again);
}

#[test]
fn padding_in_a_batch_does_not_change_a_query_s_vector() {
    let dir = fixture();
    for pooling in [Pooling::Mean, Pooling::Cls] {
        let enc = SentenceEncoder::load(dir.path(), Some(pooling)).unwrap();
        let alone = rows(
            &enc.encode(&texts(&["the circle"]), &Device::Cpu, DType::F32)
                .unwrap(),
        );
        let batched = rows(
            &enc.encode(
                &texts(&["the circle", "how many are there left of the square?"]),
                &Device::Cpu,
                DType::F32,
            )
            .unwrap(),
        );
        assert!(
            max_diff(&alone[0], &batched[0]) < 1e-5,
            "{pooling:?}: {:?} vs {:?}",
            alone[0],
            batched[0]
        );
    }
}

#[test]
fn mean_and_cls_pooling_differ() {
    let dir = fixture();
    let q = texts(&["what is left of the circle"]);
    let mean = SentenceEncoder::load(dir.path(), Some(Pooling::Mean)).unwrap();
    let cls = SentenceEncoder::load(dir.path(), Some(Pooling::Cls)).unwrap();
    let a = rows(&mean.encode(&q, &Device::Cpu, DType::F32).unwrap());
    let b = rows(&cls.encode(&q, &Device::Cpu, DType::F32).unwrap());
    assert!(max_diff(&a[0], &b[0]) > 1e-3);
}

#[test]
fn sentence_transformers_files_choose_pooling_and_normalisation() {
    let dir = fixture();
    std::fs::write(
        dir.path().join("modules.json"),
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
            {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
            {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
    std::fs::write(
        dir.path().join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension":24,"pooling_mode_cls_token":true,"pooling_mode_mean_tokens":false}"#,
    )
    .unwrap();
    let enc = SentenceEncoder::load(dir.path(), None).unwrap();
    assert_eq!(enc.pooling(), Pooling::Cls);
    assert!(enc.normalizes());
    let v = rows(
        &enc.encode(
            &texts(&["the square", "what color"]),
            &Device::Cpu,
            DType::F32,
        )
        .unwrap(),
    );
    for row in v {
        let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    }
    // The recipe's choice wins over the directory's.
    let enc = SentenceEncoder::load(dir.path(), Some(Pooling::Mean)).unwrap();
    assert_eq!(enc.pooling(), Pooling::Mean);

    std::fs::write(
        dir.path().join("1_Pooling/config.json"),
        r#"{"pooling_mode_cls_token":false,"pooling_mode_mean_tokens":false,"pooling_mode_max_tokens":true}"#,
    )
    .unwrap();
    let err = SentenceEncoder::load(dir.path(), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("1_Pooling/config.json") && err.contains("pooling"),
        "{err}"
    );
}

#[test]
fn shared_loads_are_one_copy() {
    let dir = fixture();
    let a = SentenceEncoder::load_shared(dir.path(), None).unwrap();
    let b = SentenceEncoder::load_shared(dir.path(), None).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    let c = SentenceEncoder::load_shared(dir.path(), Some(Pooling::Cls)).unwrap();
    assert!(!Arc::ptr_eq(&a, &c));
}

#[test]
fn broken_directories_are_refused_with_the_reason() {
    let err = |dir: &Path| SentenceEncoder::load(dir, None).unwrap_err().to_string();

    let dir = fixture();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let e = err(dir.path());
    assert!(e.contains("tokenizer.json") && e.contains("missing"), "{e}");

    let dir = fixture();
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let e = err(dir.path());
    assert!(e.contains("config.json") && e.contains("missing"), "{e}");

    let dir = fixture();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"").unwrap();
    let e = err(dir.path());
    assert!(
        e.contains("no model.safetensors") && e.contains("convert"),
        "{e}"
    );

    let dir = fixture();
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    let e = err(dir.path());
    assert!(e.contains("model.safetensors"), "{e}");

    // A checkpoint of another width than its config says.
    let dir = fixture();
    let other = tempfile::tempdir().unwrap();
    let wide = TinyBert {
        hidden_size: 32,
        ..TinyBert::default()
    };
    write_random_bert(other.path(), &WORDS, &wide).unwrap();
    std::fs::copy(
        other.path().join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let e = err(dir.path());
    assert!(e.contains("do not fit config.json"), "{e}");

    let dir = fixture();
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"bert\"", "\"mpnet\""),
    )
    .unwrap();
    let e = err(dir.path());
    assert!(e.contains("`mpnet`") && e.contains("BERT"), "{e}");
}

/// A real pretrained model from `scripts/fetch-test-models.sh`, or `None` (with
/// the reason printed) when it has not been fetched.
fn test_model(name: &str) -> Option<PathBuf> {
    let root = std::env::var_os("VLMKIT_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-models"));
    let dir = root.join(name);
    if dir.join("model.safetensors").is_file() {
        Some(dir)
    } else {
        println!(
            "skipped: {} is absent; run scripts/fetch-test-models.sh",
            dir.display()
        );
        None
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn real_all_minilm_l6_v2_gives_the_published_similarities() {
    let Some(dir) = test_model("all-MiniLM-L6-v2") else {
        return;
    };
    let enc = SentenceEncoder::load(&dir, None).unwrap();
    // The directory's sentence-transformers files: mean pooling, then Normalize.
    assert_eq!(enc.hidden_size(), 384);
    assert_eq!(enc.pooling(), Pooling::Mean);
    assert!(enc.normalizes());
    // sbert.net's examples for this model, printed to four decimals.
    let check = |left: &[&str], right: &[&str], expected: &[&[f32]]| {
        let a = rows(&enc.encode(&texts(left), &Device::Cpu, DType::F32).unwrap());
        let b = rows(&enc.encode(&texts(right), &Device::Cpu, DType::F32).unwrap());
        for (i, row) in expected.iter().enumerate() {
            for (j, &want) in row.iter().enumerate() {
                let got = cosine(&a[i], &b[j]);
                assert!(
                    (got - want).abs() < 2e-4,
                    "{:?} vs {:?}: {got:.5}, published {want:.4}",
                    left[i],
                    right[j]
                );
            }
        }
    };
    let quickstart = [
        "The weather is lovely today.",
        "It's so sunny outside!",
        "He drove to the stadium.",
    ];
    check(
        &quickstart,
        &quickstart,
        &[
            &[1.0, 0.6660, 0.1046],
            &[0.6660, 1.0, 0.1411],
            &[0.1046, 0.1411, 1.0],
        ],
    );
    check(
        &[
            "The new movie is awesome",
            "The cat sits outside",
            "A man is playing guitar",
        ],
        &[
            "The dog plays in the garden",
            "The new movie is so great",
            "A woman watches TV",
        ],
        &[
            &[0.0543, 0.8939, -0.0502],
            &[0.2838, -0.0029, 0.1310],
            &[0.2277, -0.0136, -0.0327],
        ],
    );
}
