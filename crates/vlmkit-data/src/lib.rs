//! Training data for vlmkit.
//!
//! - [`shapes`]: a deterministic procedural world of coloured shapes and letters with
//!   seven question families, small enough to train a vision-language model in minutes.
//! - [`llava`]: reading and writing LLaVA-1.5 conversation JSON (plus vlmkit's optional
//!   `mask`, `family` and `meta` fields).
//! - [`example`]: the common in-memory training example both produce.
//! - [`mask`]: region-mask helpers for grounding losses.
//! - [`export`]: writes a shapes split to disk in the LLaVA format.
//! - [`processor`], [`resample`]: transformers' CLIP and SigLIP image processors and
//!   LLaVA's pad-to-square, with Pillow's bicubic resize, bit for bit.

pub mod benchmark_export;
pub mod collate;
pub mod error;
pub mod example;
pub mod export;
pub mod llava;
pub mod mask;
pub mod processor;
pub mod resample;
pub mod rle;
pub mod shapes;
pub mod template;
pub mod tokenizer;

pub use benchmark_export::{export_benchmark, BenchmarkExport, BenchmarkFormat};
pub use collate::Collator;
pub use error::{DataError, RecordRef};
pub use example::{Example, Role, Turn, IMAGE_TOKEN};
pub use export::{export_split, ExportSummary};
pub use llava::{read_image, write_llava_json, ImageReadError, LlavaDataset, LlavaRecord};
pub use shapes::{Family, PopeMode, Sample, ShapesConfig, ShapesDataset, Split};
pub use template::ChatTemplate;
pub use tokenizer::TextTokenizer;
