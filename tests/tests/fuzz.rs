//! Fuzzing what a user or a file hands vlmkit: recipe files, `--set`
//! overrides, LLaVA JSON, safetensors and GGUF headers, images. Each property
//! takes valid inputs and damages them (flipped, inserted, deleted and cut
//! bytes) or makes them up, and requires an answer: a value or an error. A panic
//! fails the case; an abort or a hang fails the binary; so does an allocation
//! beyond [`ALLOCATION_BOUND`] (these inputs are a few KiB: anything near the
//! bound is a length read from the file and trusted).
//!
//! CI runs `VLMKIT_FUZZ_CASES` cases per property (default 1000); set it higher
//! for a long run. The plugin declaration reader is fuzzed beside the example
//! plugin it mutates (`tests/plugins.rs`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use vlmkit_tests::repo;

/// No single allocation may exceed this; inputs are at most a few KiB.
const ALLOCATION_BOUND: usize = 1 << 30;

/// Aborts (failing the binary, with the size) on an allocation beyond the bound:
/// the system allocator would abort on a request of terabytes anyway, with no
/// word of where it came from.
struct Bounded;

unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn check(size: usize) {
    if size > ALLOCATION_BOUND {
        // No allocating here: the digits go out from the stack.
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut n = size;
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for part in [
            &b"fuzz: an allocation of "[..],
            &digits[at..],
            &b" bytes, beyond the bound\n"[..],
        ] {
            unsafe { libc_write(2, part.as_ptr(), part.len()) };
        }
        std::process::abort();
    }
}

unsafe extern "C" {
    #[link_name = "write"]
    fn libc_write(fd: i32, buf: *const u8, count: usize) -> isize;
}

#[global_allocator]
static ALLOCATOR: Bounded = Bounded;

/// Cases per property.
fn cases() -> u32 {
    std::env::var("VLMKIT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// The longest one case may take before the binary is stopped as hung.
const CASE_LIMIT: Duration = Duration::from_secs(60);

/// Aborts the process when a case runs past [`CASE_LIMIT`]: a hang must fail
/// the run, not stall it.
struct Watchdog {
    started_ms: &'static AtomicU64,
}

impl Watchdog {
    fn start() -> Self {
        static STARTED_MS: AtomicU64 = AtomicU64::new(0);
        static SPAWN: std::sync::Once = std::sync::Once::new();
        let epoch = Instant::now();
        SPAWN.call_once(move || {
            std::thread::spawn(move || loop {
                std::thread::sleep(Duration::from_secs(1));
                let started = STARTED_MS.load(Ordering::SeqCst);
                let now = epoch.elapsed().as_millis() as u64;
                if started != 0 && now.saturating_sub(started) > CASE_LIMIT.as_millis() as u64 {
                    eprintln!("fuzz: a case ran longer than {CASE_LIMIT:?}: hung");
                    std::process::abort();
                }
            });
        });
        let _ = epoch;
        Self {
            started_ms: &STARTED_MS,
        }
    }
}

/// Runs `property` over `strategy` for [`cases`] cases, each under the watchdog;
/// returns how many ran.
fn fuzz<S: Strategy>(name: &str, strategy: S, property: impl Fn(S::Value)) -> u32
where
    S::Value: std::fmt::Debug,
{
    let watchdog = Watchdog::start();
    let epoch = Instant::now();
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let ran = std::sync::atomic::AtomicU32::new(0);
    let result = runner.run(&strategy, |value| {
        // Milliseconds since this property began, plus one (0 means idle).
        watchdog
            .started_ms
            .store(epoch.elapsed().as_millis() as u64 + 1, Ordering::SeqCst);
        property(value);
        watchdog.started_ms.store(0, Ordering::SeqCst);
        ran.fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    let ran = ran.load(Ordering::SeqCst);
    eprintln!("fuzz {name}: {ran} cases, no panic, abort or hang");
    ran
}

/// Damage done to valid bytes.
#[derive(Debug, Clone)]
enum Edit {
    Flip { at: usize, bit: u8 },
    Set { at: usize, byte: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
    Cut { at: usize },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Edit::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Edit::Set { at, byte }),
        // Bytes that matter to parsers, and some that do not.
        (
            any::<usize>(),
            prop::collection::vec(
                prop_oneof![
                    Just(b'"'),
                    Just(b'{'),
                    Just(b'}'),
                    Just(b'['),
                    Just(b']'),
                    Just(b','),
                    Just(b':'),
                    Just(b'='),
                    Just(b'.'),
                    Just(b'\\'),
                    Just(b'\n'),
                    Just(0xff),
                    Just(0),
                    any::<u8>()
                ],
                1..8
            )
        )
            .prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Edit::Delete { at, len }),
        any::<usize>().prop_map(|at| Edit::Cut { at }),
    ]
}

/// A few edits, applied at positions taken modulo the length (`region`, when
/// given, is where most of them land: a header).
fn damaged(valid: Vec<u8>, region: Option<usize>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((edit(), any::<bool>()), 1..6).prop_map(move |edits| {
        let mut bytes = valid.clone();
        for (edit, in_region) in edits {
            // Where edits land: the region, else anywhere; never past the end.
            let len = bytes.len();
            let span = match region {
                Some(r) if in_region => r.min(len),
                _ => len,
            }
            .max(1);
            let within = span.min(len).max(1);
            match edit {
                Edit::Flip { at, bit } if !bytes.is_empty() => bytes[at % within] ^= 1 << bit,
                Edit::Set { at, byte } if !bytes.is_empty() => bytes[at % within] = byte,
                Edit::Insert { at, bytes: new } => {
                    let at = at % (span.min(len) + 1);
                    bytes.splice(at..at, new);
                }
                Edit::Delete { at, len: cut } if !bytes.is_empty() => {
                    let at = at % within;
                    bytes.drain(at..(at + cut).min(len));
                }
                Edit::Cut { at } => bytes.truncate(at % (len + 1)),
                _ => {}
            }
        }
        bytes
    })
}

/// Valid bytes damaged, or bytes made up.
fn inputs(valid: Vec<u8>, region: Option<usize>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => damaged(valid, region),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
}

/// A directory for one property's files.
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn recipe_files() {
    let dir = scratch();
    // `extends` finds its base beside the recipe.
    std::fs::copy(
        repo().join("recipes/base-shapes.toml"),
        dir.path().join("base-shapes.toml"),
    )
    .unwrap();
    let valid = std::fs::read(repo().join("recipes/ccra.toml")).unwrap();
    let base = std::fs::read(repo().join("recipes/base-shapes.toml")).unwrap();
    let components = vlmkit_tests::components();
    let strategy = prop_oneof![inputs(valid, None), inputs(base, None)];
    let ran = fuzz("recipe files", strategy, |bytes| {
        let path = write(dir.path(), "recipe.toml", &bytes);
        if let Ok(recipe) = vlmkit_recipe::Recipe::load(&path, &[]) {
            // A recipe that loads is also checked as a whole.
            let _ = vlmkit_pipeline::Plan::inspect(recipe, &components);
        }
    });
    assert_eq!(ran, cases());
}

/// Key paths from the recipe's own keys, damaged, and values of every TOML kind.
fn override_text() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "run.seed",
        "run.threads",
        "run.checkpoint_every",
        "stage.0.batch_size",
        "stage.0.lr",
        "stage.1.lr",
        "stage[0].steps",
        "llm.hidden_size",
        "vision.image_size",
        "data.train.image_size",
        "data.eval.samples",
        "connector.kind",
        "connector.d_hidden",
        "eval.max_new_tokens",
        "\"quoted\".key",
        "a.b.c.d.e.f.g",
        "stage.99999999999999999999.lr",
    ]);
    let values = prop::sample::select(vec![
        "0",
        "-1",
        "1e308",
        "nan",
        "inf",
        "18446744073709551616",
        "\"text\"",
        "true",
        "[1, 2]",
        "{ a = 1 }",
        "",
        "\"",
        "[",
        "{",
        "0x10",
        "1979-05-27",
        "'''",
        "\"\\u0000\"",
    ]);
    let edited = (keys, values, prop::collection::vec(any::<char>(), 0..6)).prop_map(
        |(key, value, noise)| {
            let noise: String = noise.into_iter().collect();
            format!("{key}{noise}={value}")
        },
    );
    prop_oneof![
        3 => edited,
        1 => "\\PC{0,40}",
        // Deep key paths.
        1 => (1usize..200).prop_map(|n| format!("{}=1", vec!["a"; n].join("."))),
    ]
}

#[test]
fn set_overrides() {
    let recipe = repo().join("recipes/mlp.toml");
    let ran = fuzz(
        "--set overrides",
        prop::collection::vec(override_text(), 1..4),
        |overrides| {
            let _ = vlmkit_recipe::Recipe::load(&recipe, &overrides);
        },
    );
    assert_eq!(ran, cases());
}

#[test]
fn llava_json() {
    let dir = scratch();
    image::RgbImage::from_pixel(4, 3, image::Rgb([200, 10, 10]))
        .save(dir.path().join("a.png"))
        .unwrap();
    let valid = br#"[
  {"id": "a", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "red"}], "mask": {"size": [3, 4], "counts": [3, 2, 1, 3, 3]}},
  {"id": 7, "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}], "family": "greeting", "meta": {"k": "v"}},
  {"id": "b", "image": "a.png", "box": [0, 0, 2, 2], "points": [[1, 1]], "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}, {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]}
]"#
    .to_vec();
    let ran = fuzz("LLaVA JSON", inputs(valid, None), |bytes| {
        let path = write(dir.path(), "data.json", &bytes);
        if let Ok(dataset) = vlmkit_data::LlavaDataset::open(&path, None) {
            for index in 0..dataset.len() {
                let _ = dataset.get(index);
            }
        }
    });
    assert_eq!(ran, cases());
}

#[test]
fn safetensors_headers() {
    let dir = scratch();
    let tensors = std::collections::HashMap::from([
        (
            "a".to_string(),
            candle_core::Tensor::arange(0f32, 6., &candle_core::Device::Cpu)
                .unwrap()
                .reshape((2, 3))
                .unwrap(),
        ),
        (
            "b".to_string(),
            candle_core::Tensor::ones(4, candle_core::DType::U32, &candle_core::Device::Cpu)
                .unwrap(),
        ),
    ]);
    let valid_path = dir.path().join("valid.safetensors");
    candle_core::safetensors::save(&tensors, &valid_path).unwrap();
    let valid = std::fs::read(&valid_path).unwrap();
    // The 8-byte length and the JSON header.
    let header = 8 + u64::from_le_bytes(valid[..8].try_into().unwrap()) as usize;
    let ran = fuzz("safetensors", inputs(valid, Some(header)), |bytes| {
        let path = write(dir.path(), "model.safetensors", &bytes);
        // How vlmkit reads checkpoints, `model forward` inputs and HF weights.
        let _ = candle_core::safetensors::load(&path, &candle_core::Device::Cpu);
        let _ =
            vlmkit_core::params::ParamStore::new(candle_core::Device::Cpu, candle_core::DType::F32)
                .load_safetensors(&path, "");
    });
    assert_eq!(ran, cases());
}

#[test]
fn gguf_headers() {
    let dir = scratch();
    let valid = std::fs::read(repo().join("tests/fixtures/gguf/tiny-llama.Q4_1.gguf")).unwrap();
    // Metadata and tensor infos come first; most edits land there.
    let ran = fuzz("GGUF", inputs(valid, Some(4096)), |bytes| {
        let path = write(dir.path(), "model.gguf", &bytes);
        if let Ok(file) = vlmkit_models::gguf::GgufFile::open(&path) {
            let _ = file.language_checkpoint();
            let _ = file.tokenizer_json();
        }
        let _ = vlmkit_models::hf::read_language_config(&path);
    });
    assert_eq!(ran, cases());
}

#[test]
fn images() {
    let dir = scratch();
    let picture = image::RgbImage::from_fn(24, 16, |x, y| {
        image::Rgb([(x * 10) as u8, (y * 15) as u8, 99])
    });
    let mut png = Vec::new();
    picture
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let mut jpeg = Vec::new();
    picture
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    write(
        dir.path(),
        "data.json",
        br#"[{"id": "x", "image": "x.img", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]"#,
    );
    let dataset = vlmkit_data::LlavaDataset::open(dir.path().join("data.json"), None).unwrap();
    let strategy = prop_oneof![inputs(png, Some(64)), inputs(jpeg, Some(256)),];
    let ran = fuzz("images", strategy, |bytes| {
        write(dir.path(), "x.img", &bytes);
        // As training reads a record's image (formats by their contents).
        if let Ok(example) = dataset.get(0) {
            let image = example.image.expect("the record has an image");
            assert!(image.width() > 0 && image.height() > 0);
        }
    });
    assert_eq!(ran, cases());
}
