//! LLaVA-1.5 conversation JSON: reading (records parsed and images decoded on
//! access) and writing.
//!
//! LLaVA-Instruct's mixture is 665K records, about 1 GB of JSON. Opening a file
//! scans it once for where each record starts and ends (and parses each once, so
//! a broken record is reported up front with its index and line); afterwards the
//! dataset holds only those positions, and reads and parses a record when it is
//! asked for — never the whole file, never decoded images.
//!
//! The file is a JSON array of records:
//! `{"id": ..., "image": "relative/path.png", "conversations": [{"from": "human",
//! "value": "<image>\nQuestion"}, {"from": "gpt", "value": "Answer"}, ...]}`.
//! vlmkit adds three optional fields: `"mask"` (the region the conversation is
//! about: a relative path to an 8-bit grey PNG, non-zero = inside, or a COCO RLE
//! object `{"size": [h, w], "counts": …}`), `"family"` and `"meta"` (an object of
//! strings). Records without
//! `"image"` are text-only examples. Unknown fields are ignored, as LLaVA mixtures
//! often carry extra annotations.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{DynamicImage, ImageReader};
use serde::{Deserialize, Serialize};

use crate::error::ImagePart;
use crate::error::{DataError, RecordRef};
use crate::example::placeholder_problem;
use crate::example::{Example, Role, Turn};
use crate::mask;
use crate::rle::CocoRle;

/// Where a record's region mask is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MaskRef {
    /// An 8-bit grey PNG, relative to the image root.
    Path(String),
    /// COCO run-length encoding at the image's size.
    Rle(CocoRle),
}

/// One record of a LLaVA JSON file, with paths still relative to the image root.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlavaRecord {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub conversations: Vec<Turn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<MaskRef>,
    /// A box around the region, `[x0, y0, x1, y1]` in image pixels: a prompt for a
    /// segmentation teacher (`vlmkit masks`).
    #[serde(default, rename = "box", skip_serializing_if = "Option::is_none")]
    pub region_box: Option<[f64; 4]>,
    /// Points inside the region, `[[x, y], …]` in image pixels (another prompt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points: Option<Vec<[f64; 2]>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

impl LlavaRecord {
    /// A record for `example` whose image and mask are stored at the given relative paths.
    pub fn from_example(example: &Example, image: Option<String>, mask: Option<String>) -> Self {
        LlavaRecord {
            id: example.id.clone(),
            image,
            conversations: example.turns.clone(),
            mask: mask.map(MaskRef::Path),
            region_box: None,
            points: None,
            family: example.family.clone(),
            meta: example.meta.clone(),
        }
    }
}

/// The on-disk shape of a record, lenient so that problems can be reported precisely.
#[derive(Deserialize)]
struct RawRecord {
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    conversations: Option<Vec<RawTurn>>,
    #[serde(default)]
    mask: Option<MaskRef>,
    #[serde(default, rename = "box")]
    region_box: Option<[f64; 4]>,
    #[serde(default)]
    points: Option<Vec<[f64; 2]>>,
    #[serde(default)]
    family: Option<String>,
    #[serde(default)]
    meta: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawTurn {
    from: String,
    value: String,
}

/// LLaVA ids are usually strings but some public mixtures use numbers.
fn record_id(value: &serde_json::Value) -> Option<String> {
    match value.get("id")? {
        serde_json::Value::String(id) => Some(id.clone()),
        serde_json::Value::Number(id) => Some(id.to_string()),
        _ => None,
    }
}

/// Where a record sits in the file, and the line and column it starts at.
#[derive(Clone, Copy, Debug)]
struct Span {
    offset: u64,
    len: u32,
    line: u32,
    column: u32,
}

/// A LLaVA JSON dataset: the positions of its records, read and parsed on access;
/// images decoded on access.
#[derive(Clone, Debug)]
pub struct LlavaDataset {
    json_path: PathBuf,
    image_root: PathBuf,
    file: Arc<File>,
    spans: Vec<Span>,
    /// Records that cannot be used, as the check at open found them.
    unusable: Vec<u64>,
}

impl LlavaDataset {
    /// Indexes `json_path` and checks every record. Image and mask paths are
    /// relative to `image_root`, which defaults to the JSON file's directory.
    /// Records without an id get their index.
    pub fn open(
        json_path: impl AsRef<Path>,
        image_root: Option<PathBuf>,
    ) -> Result<Self, DataError> {
        Self::open_visiting(json_path, image_root, |_| {})
    }

    /// As [`LlavaDataset::open`], handing every record to `visit` as the check at
    /// open parses it (one pass over the file for, e.g., a vocabulary).
    pub fn open_visiting(
        json_path: impl AsRef<Path>,
        image_root: Option<PathBuf>,
        mut visit: impl FnMut(&LlavaRecord),
    ) -> Result<Self, DataError> {
        let json_path = json_path.as_ref().to_path_buf();
        let io = |source| DataError::Io {
            path: json_path.clone(),
            source,
        };
        vlmkit_core::fsutil::check_regular_file(&json_path, MAX_JSON_BYTES).map_err(io)?;
        let file = File::open(&json_path).map_err(io)?;
        let spans = index_records(
            &json_path,
            std::io::BufReader::with_capacity(1 << 20, &file),
        )?;
        let image_root = image_root.unwrap_or_else(|| {
            json_path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        });
        let mut dataset = LlavaDataset {
            json_path,
            image_root,
            file: Arc::new(file),
            spans,
            unusable: Vec::new(),
        };
        // Every record is parsed and its text checked now, not hours into
        // training: a broken one is noted (and skipped when reached), the file
        // stays usable.
        for index in 0..dataset.len() {
            match dataset.checked_record(index) {
                Ok((record, _)) => visit(&record),
                Err(error) if error.is_record_problem() => dataset.unusable.push(index as u64),
                Err(error) => return Err(error),
            }
        }
        Ok(dataset)
    }

    /// The records the check at open found unusable (their errors come back from
    /// [`LlavaDataset::get`]); images are not decoded for it.
    pub fn unusable(&self) -> &[u64] {
        &self.unusable
    }

    pub fn json_path(&self) -> &Path {
        &self.json_path
    }

    pub fn image_root(&self) -> &Path {
        &self.image_root
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Record `index`, read from the file and parsed.
    pub fn record(&self, index: usize) -> Result<LlavaRecord, DataError> {
        let span = *self.spans.get(index).ok_or(DataError::IndexOutOfRange {
            index,
            len: self.spans.len(),
        })?;
        let mut bytes = vec![0u8; span.len as usize];
        read_at(&self.file, &mut bytes, span.offset).map_err(|source| DataError::Io {
            path: self.json_path.clone(),
            source,
        })?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|error| DataError::Json {
                path: self.json_path.clone(),
                line: span.line as usize + error.line() - 1,
                column: if error.line() == 1 {
                    span.column as usize + error.column() - 1
                } else {
                    error.column()
                },
                message: error.to_string(),
            })?;
        parse_record(&self.json_path, index, value)
    }

    /// Every record in order, each read and parsed as the iterator reaches it.
    pub fn records(&self) -> impl Iterator<Item = Result<LlavaRecord, DataError>> + '_ {
        (0..self.len()).map(|index| self.record(index))
    }

    /// The image of record `index`, decoded (`None` for a text-only record).
    pub fn image(&self, index: usize) -> Result<Option<image::RgbImage>, DataError> {
        let (record, record_ref) = self.record_with_ref(index)?;
        Ok(self
            .record_image(&record, &record_ref)?
            .map(|(image, _)| image))
    }

    /// Record `index`, parsed and its text checked against its image and mask
    /// (without decoding them).
    fn checked_record(&self, index: usize) -> Result<(LlavaRecord, RecordRef), DataError> {
        let (record, record_ref) = self.record_with_ref(index)?;
        if record.mask.is_some() && record.image.is_none() {
            return Err(DataError::MaskWithoutImage {
                path: self.json_path.clone(),
                record: record_ref,
            });
        }
        if let Some(reason) = placeholder_problem(&record.conversations, record.image.is_some()) {
            return Err(DataError::InvalidRecord {
                path: self.json_path.clone(),
                record: record_ref,
                reason,
            });
        }
        Ok((record, record_ref))
    }

    /// Example `index` with its image and mask decoded.
    pub fn get(&self, index: usize) -> Result<Example, DataError> {
        let (record, record_ref) = self.checked_record(index)?;
        let image = self.record_image(&record, &record_ref)?;
        let mask = match (&record.mask, &image) {
            (Some(source), Some((image, image_path))) => {
                let (mask, mask_path) = match source {
                    MaskRef::Path(relative) => {
                        let mask_path = self.image_root.join(relative);
                        let decoded = self
                            .decode(&mask_path, &record_ref, ImagePart::Mask)?
                            .to_luma8();
                        (mask::binarize(&decoded), mask_path)
                    }
                    MaskRef::Rle(rle) => {
                        let decoded = rle.decode().map_err(|e| DataError::InvalidRecord {
                            path: self.json_path.clone(),
                            record: record_ref.clone(),
                            reason: format!("\"mask\" (COCO RLE): {e}"),
                        })?;
                        (decoded, PathBuf::from("(COCO RLE)"))
                    }
                };
                if mask.dimensions() != image.dimensions() {
                    return Err(DataError::MaskSizeMismatch {
                        path: self.json_path.clone(),
                        record: record_ref,
                        mask: mask_path,
                        mask_size: mask.dimensions(),
                        image: image_path.clone(),
                        image_size: image.dimensions(),
                    });
                }
                Some(mask)
            }
            // `checked_record` refused a mask without an image.
            _ => None,
        };
        Ok(Example {
            id: record.id.clone(),
            image: image.map(|(image, _)| image),
            turns: record.conversations.clone(),
            mask,
            family: record.family.clone(),
            meta: record.meta.clone(),
        })
    }

    /// Record `index` and how errors name it.
    fn record_with_ref(&self, index: usize) -> Result<(LlavaRecord, RecordRef), DataError> {
        let record = self.record(index)?;
        let record_ref = RecordRef {
            index,
            id: Some(record.id.clone()),
        };
        Ok((record, record_ref))
    }

    /// The record's image, decoded, with its path (`None` for a text-only record).
    fn record_image(
        &self,
        record: &LlavaRecord,
        record_ref: &RecordRef,
    ) -> Result<Option<(image::RgbImage, PathBuf)>, DataError> {
        record
            .image
            .as_ref()
            .map(|relative| {
                let path = self.image_root.join(relative);
                Ok((
                    self.decode(&path, record_ref, ImagePart::Image)?.to_rgb8(),
                    path,
                ))
            })
            .transpose()
    }

    /// Decodes the record's `what` ("image" or "mask") at `path`.
    fn decode(
        &self,
        path: &Path,
        record: &RecordRef,
        what: ImagePart,
    ) -> Result<DynamicImage, DataError> {
        let corrupt = |reason: String| DataError::CorruptImage {
            path: self.json_path.clone(),
            record: record.clone(),
            what,
            image: path.to_path_buf(),
            reason,
        };
        read_image(path).map_err(|error| match error {
            ImageReadError::NotFound => DataError::ImageNotFound {
                path: self.json_path.clone(),
                record: record.clone(),
                what,
                image: path.to_path_buf(),
            },
            ImageReadError::Io(source) => DataError::Io {
                path: path.to_path_buf(),
                source,
            },
            ImageReadError::Corrupt(reason) => corrupt(reason),
        })
    }
}

/// Why an image file could not be read.
#[derive(Debug)]
pub enum ImageReadError {
    NotFound,
    /// Not a regular file, larger than [`MAX_IMAGE_BYTES`], or unreadable.
    Io(std::io::Error),
    /// Not an image of a format read here, or damaged.
    Corrupt(String),
}

impl std::fmt::Display for ImageReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageReadError::NotFound => f.write_str("no such file"),
            ImageReadError::Io(e) => write!(f, "{e}"),
            ImageReadError::Corrupt(reason) => write!(f, "not a readable image: {reason}"),
        }
    }
}

/// Decodes the image file at `path` (a regular file of at most
/// [`MAX_IMAGE_BYTES`], its format guessed from its bytes).
pub fn read_image(path: &Path) -> Result<DynamicImage, ImageReadError> {
    let reader = vlmkit_core::fsutil::check_regular_file(path, MAX_IMAGE_BYTES)
        .and_then(|_| ImageReader::open(path))
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ImageReadError::NotFound,
            _ => ImageReadError::Io(source),
        })?;
    let reader = reader
        .with_guessed_format()
        .map_err(|e| ImageReadError::Corrupt(e.to_string()))?;
    reader
        .decode()
        .map_err(|e| ImageReadError::Corrupt(e.to_string()))
}

/// The largest conversation file read (LLaVA-1.5's 665K mix is about 1 GB).
const MAX_JSON_BYTES: u64 = 16 << 30;
/// The largest image file read; decoding is bounded separately.
pub const MAX_IMAGE_BYTES: u64 = 256 << 20;

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = file.try_clone()?;
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

/// Finds where each record of a JSON array of objects starts and ends, reading
/// the file once in blocks; strings (and their escapes) are skipped, so braces
/// inside them do not count. The records' own syntax is checked when they are
/// parsed.
fn index_records(path: &Path, mut reader: impl BufRead) -> Result<Vec<Span>, DataError> {
    let json = |line: u32, column: u32, message: &str| DataError::Json {
        path: path.to_path_buf(),
        line: line as usize,
        column: column as usize,
        message: message.to_string(),
    };
    let mut spans = Vec::new();
    let (mut offset, mut line, mut column) = (0u64, 1u32, 1u32);
    let (mut in_string, mut escaped) = (false, false);
    let (mut opened, mut closed) = (false, false);
    // The closers owed inside the current record (empty between records).
    let mut closers: Vec<u8> = Vec::new();
    let mut start = (0u64, 0u32, 0u32);
    loop {
        let block = reader.fill_buf().map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if block.is_empty() {
            break;
        }
        for &byte in block {
            if in_string {
                if escaped {
                    escaped = false;
                } else if byte == b'\\' {
                    escaped = true;
                } else if byte == b'"' {
                    in_string = false;
                }
            } else if !byte.is_ascii_whitespace() {
                if closed {
                    return Err(json(
                        line,
                        column,
                        "unexpected text after the array of records",
                    ));
                }
                if !opened {
                    if byte != b'[' {
                        return Err(json(
                            line,
                            column,
                            "a LLaVA file is a JSON array of records: expected `[`",
                        ));
                    }
                    opened = true;
                } else if closers.is_empty() {
                    // Between records.
                    match byte {
                        b'{' => {
                            start = (offset, line, column);
                            closers.push(b'}');
                        }
                        b',' => {}
                        b']' => closed = true,
                        _ => {
                            return Err(DataError::InvalidRecord {
                                path: path.to_path_buf(),
                                record: RecordRef {
                                    index: spans.len(),
                                    id: None,
                                },
                                reason: format!(
                                    "expected a JSON object (line {line}, column {column})"
                                ),
                            })
                        }
                    }
                } else {
                    match byte {
                        b'"' => in_string = true,
                        b'{' => closers.push(b'}'),
                        b'[' => closers.push(b']'),
                        b'}' | b']' => {
                            let owed = closers.pop().expect("inside a record");
                            if byte != owed {
                                return Err(json(
                                    line,
                                    column,
                                    &format!(
                                        "found `{}` where `{}` closes what is open",
                                        byte as char, owed as char
                                    ),
                                ));
                            }
                            if closers.is_empty() {
                                let len = u32::try_from(offset + 1 - start.0).map_err(|_| {
                                    json(start.1, start.2, "a record longer than 4 GiB")
                                })?;
                                spans.push(Span {
                                    offset: start.0,
                                    len,
                                    line: start.1,
                                    column: start.2,
                                });
                            }
                        }
                        _ => {}
                    }
                }
            }
            offset += 1;
            if byte == b'\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        let consumed = block.len();
        reader.consume(consumed);
    }
    if !closed {
        return Err(json(
            line,
            column,
            if opened {
                "the file ends inside the array of records (cut short?)"
            } else {
                "empty file: expected a JSON array of records"
            },
        ));
    }
    Ok(spans)
}

fn parse_record(
    path: &Path,
    index: usize,
    value: serde_json::Value,
) -> Result<LlavaRecord, DataError> {
    let id = record_id(&value);
    let record = RecordRef {
        index,
        id: id.clone(),
    };
    if !value.is_object() {
        return Err(DataError::InvalidRecord {
            path: path.to_path_buf(),
            record,
            reason: "expected a JSON object".to_owned(),
        });
    }
    let raw: RawRecord =
        serde_json::from_value(value).map_err(|error| DataError::InvalidRecord {
            path: path.to_path_buf(),
            record: record.clone(),
            reason: error.to_string(),
        })?;
    let Some(raw_turns) = raw.conversations else {
        return Err(DataError::MissingConversations {
            path: path.to_path_buf(),
            record,
        });
    };
    if raw_turns.is_empty() {
        return Err(DataError::InvalidRecord {
            path: path.to_path_buf(),
            record,
            reason: "\"conversations\" is empty".to_owned(),
        });
    }
    let mut conversations = Vec::with_capacity(raw_turns.len());
    for (turn, raw_turn) in raw_turns.into_iter().enumerate() {
        let Some(from) = Role::from_name(&raw_turn.from) else {
            return Err(DataError::UnknownRole {
                path: path.to_path_buf(),
                record,
                turn,
                role: raw_turn.from,
            });
        };
        conversations.push(Turn {
            from,
            value: raw_turn.value,
        });
    }
    Ok(LlavaRecord {
        id: id.unwrap_or_else(|| index.to_string()),
        image: raw.image,
        conversations,
        mask: raw.mask,
        region_box: raw.region_box,
        points: raw.points,
        family: raw.family,
        meta: raw.meta,
    })
}

/// Writes `records` as a pretty-printed LLaVA JSON array, atomically.
pub fn write_llava_json(path: impl AsRef<Path>, records: &[LlavaRecord]) -> Result<(), DataError> {
    let path = path.as_ref();
    let mut bytes = serde_json::to_vec_pretty(records).expect("records always serialise");
    bytes.push(b'\n');
    vlmkit_plot::io::write_file_atomic(path, &bytes).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let fixture = Fixture {
                dir: tempfile::tempdir().unwrap(),
            };
            std::fs::create_dir(fixture.dir.path().join("img")).unwrap();
            fixture
        }

        fn path(&self, relative: &str) -> PathBuf {
            self.dir.path().join(relative)
        }

        fn write_json(&self, text: &str) -> PathBuf {
            let path = self.path("data.json");
            std::fs::write(&path, text).unwrap();
            path
        }

        fn write_image(&self, relative: &str, width: u32, height: u32) -> RgbImage {
            let image =
                RgbImage::from_fn(width, height, |x, y| Rgb([x as u8 * 10, y as u8 * 10, 7]));
            image.save(self.path(relative)).unwrap();
            image
        }

        fn open_error(&self, text: &str) -> String {
            let path = self.write_json(text);
            LlavaDataset::open(&path, None).unwrap_err().to_string()
        }

        fn get_error(&self, text: &str) -> String {
            self.get_error_at(text, 0)
        }

        /// Record `index`'s error; the file opens, the record noted unusable.
        fn get_error_at(&self, text: &str, index: usize) -> String {
            let path = self.write_json(text);
            let dataset = LlavaDataset::open(&path, None).unwrap();
            let error = dataset.get(index).unwrap_err();
            assert!(error.is_record_problem(), "{error}");
            error.to_string()
        }
    }

    const CONVERSATION: &str = r#"[{"from": "human", "value": "<image>\nWhat color is the circle?"}, {"from": "gpt", "value": "red"}]"#;

    #[test]
    fn reads_images_masks_and_extensions() {
        let fixture = Fixture::new();
        let image = fixture.write_image("img/a.png", 4, 3);
        let mut grey = GrayImage::new(4, 3);
        grey.put_pixel(1, 1, Luma([7]));
        grey.save(fixture.path("img/a_mask.png")).unwrap();
        let path = fixture.write_json(&format!(
            r#"[{{"id": "a", "image": "img/a.png", "mask": "img/a_mask.png", "family": "color",
                 "meta": {{"answer": "red"}}, "extra": 1, "conversations": {CONVERSATION}}},
                {{"id": 7, "conversations": [{{"from": "human", "value": "Hi"}}, {{"from": "gpt", "value": "Hello"}}]}}]"#
        ));
        let dataset = LlavaDataset::open(&path, None).unwrap();
        assert_eq!(dataset.len(), 2);
        assert_eq!(dataset.image_root(), fixture.dir.path());

        let example = dataset.get(0).unwrap();
        assert_eq!(example.id, "a");
        assert_eq!(example.image, Some(image));
        assert_eq!(
            example.question().as_deref(),
            Some("What color is the circle?")
        );
        assert_eq!(example.answer(), Some("red"));
        assert_eq!(example.family.as_deref(), Some("color"));
        assert_eq!(example.meta["answer"], "red");
        let mask = example.mask.unwrap();
        assert_eq!(
            mask.get_pixel(1, 1).0[0],
            255,
            "non-zero mask values are inside"
        );
        assert_eq!(mask::area(&mask), 1);

        let text_only = dataset.get(1).unwrap();
        assert_eq!(text_only.id, "7");
        assert_eq!(text_only.image, None);
        assert_eq!(text_only.answer(), Some("Hello"));
        assert!(matches!(
            dataset.get(2),
            Err(DataError::IndexOutOfRange { index: 2, len: 2 })
        ));
    }

    #[test]
    fn image_root_overrides_the_json_directory() {
        let fixture = Fixture::new();
        let image = fixture.write_image("img/b.png", 2, 2);
        let path = fixture.write_json(&format!(
            r#"[{{"id": "b", "image": "b.png", "conversations": {CONVERSATION}}}]"#
        ));
        let dataset = LlavaDataset::open(&path, Some(fixture.path("img"))).unwrap();
        assert_eq!(dataset.get(0).unwrap().image, Some(image));
    }

    #[test]
    fn malformed_json_reports_line_and_column() {
        let fixture = Fixture::new();
        let message = fixture.open_error("[\n  {\"id\": \"a\",\n  \"conversations\": [}\n]");
        assert!(message.contains("data.json"), "{message}");
        assert!(message.contains("line 3"), "{message}");
        assert!(message.contains("column"), "{message}");
    }

    #[test]
    fn records_are_found_by_their_braces_outside_strings() {
        let fixture = Fixture::new();
        // Braces, brackets, commas and escaped quotes inside strings; CRLF lines.
        let tricky =
            r#"{"from": "human", "value": "a \"}\" ]{[, \\"}, {"from": "gpt", "value": "}"}"#;
        let path = fixture.write_json(&format!(
            "[\r\n {{\"id\": \"x{{\", \"conversations\": [{tricky}]}},\r\n{{\"id\": 2, \"conversations\": {CONVERSATION}}}\r\n]\r\n"
        ));
        let dataset = LlavaDataset::open(&path, None).unwrap();
        assert_eq!(dataset.len(), 2);
        let first = dataset.record(0).unwrap();
        assert_eq!(first.id, "x{");
        assert_eq!(first.conversations[0].value, "a \"}\" ]{[, \\");
        assert_eq!(dataset.record(1).unwrap().id, "2");
        assert!(matches!(
            dataset.record(2),
            Err(DataError::IndexOutOfRange { index: 2, len: 2 })
        ));
    }

    #[test]
    fn a_file_that_is_not_an_array_of_records_is_refused_where_it_goes_wrong() {
        let fixture = Fixture::new();
        let cut = fixture.open_error(&format!(
            "[{{\"id\": 1, \"conversations\": {CONVERSATION}}},\n"
        ));
        assert!(cut.contains("line 2") && cut.contains("cut short"), "{cut}");
        let object = fixture.open_error("{\"id\": 1}");
        assert!(object.contains("expected `[`"), "{object}");
        let after = fixture.open_error("[]\n[]");
        assert!(
            after.contains("line 2, column 1") && after.contains("after the array"),
            "{after}"
        );
        let number = fixture.open_error(&format!(
            "[{{\"id\": 1, \"conversations\": {CONVERSATION}}}, 7]"
        ));
        assert!(
            number.contains("record 1") && number.contains("expected a JSON object"),
            "{number}"
        );
        let empty = fixture.open_error("");
        assert!(empty.contains("empty file"), "{empty}");
        assert_eq!(
            LlavaDataset::open(fixture.write_json(" [ ] "), None)
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn a_large_file_is_indexed_not_held() {
        // 20,000 records: the dataset keeps one position per record and reads
        // any of them back.
        let fixture = Fixture::new();
        let mut text = String::from("[");
        for i in 0..20_000 {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&format!(
                "{{\"id\": \"r{i}\", \"conversations\": [{{\"from\": \"human\", \"value\": \"question {i}\"}}, {{\"from\": \"gpt\", \"value\": \"answer {i}\"}}]}}"
            ));
        }
        text.push(']');
        let dataset = LlavaDataset::open(fixture.write_json(&text), None).unwrap();
        assert_eq!(dataset.len(), 20_000);
        assert_eq!(std::mem::size_of::<Span>(), 24);
        let last = dataset.get(19_999).unwrap();
        assert_eq!(last.id, "r19999");
        assert_eq!(last.turns[1].value, "answer 19999");
        assert!(last.image.is_none());
    }

    #[test]
    fn jpeg_images_and_misnamed_files_are_read_by_their_contents() {
        // LLaVA's images are JPEG; some datasets name PNGs `.jpg` and back.
        let fixture = Fixture::new();
        let image = RgbImage::from_fn(16, 8, |x, y| Rgb([x as u8 * 15, y as u8 * 30, 90]));
        image.save(fixture.path("img/photo.jpg")).unwrap();
        image
            .save_with_format(fixture.path("img/png.jpg"), image::ImageFormat::Png)
            .unwrap();
        let path = fixture.write_json(&format!(
            r#"[{{"id": "jpeg", "image": "img/photo.jpg", "conversations": {CONVERSATION}}},
                {{"id": "png", "image": "img/png.jpg", "conversations": {CONVERSATION}}}]"#
        ));
        let dataset = LlavaDataset::open(&path, None).unwrap();
        let jpeg = dataset.get(0).unwrap().image.unwrap();
        assert_eq!(jpeg.dimensions(), (16, 8));
        // Lossy, but the same picture.
        let worst = jpeg
            .as_raw()
            .iter()
            .zip(image.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst < 40, "{worst}");
        assert_eq!(dataset.get(1).unwrap().image.unwrap(), image);
    }

    #[test]
    fn missing_file_is_an_io_error_naming_it() {
        let error = LlavaDataset::open("/nonexistent/dir/data.json", None).unwrap_err();
        assert!(matches!(error, DataError::Io { .. }));
        assert!(error.to_string().contains("/nonexistent/dir/data.json"));
    }

    #[test]
    fn record_problems_name_the_record() {
        let fixture = Fixture::new();
        let text = format!(
            r#"[{{"id": "ok", "image": "x.png", "conversations": {CONVERSATION}}}, {{"id": "broken", "image": "x.png"}}]"#
        );
        let dataset = LlavaDataset::open(fixture.write_json(&text), None).unwrap();
        assert_eq!(dataset.unusable(), [1]);
        let message = fixture.get_error_at(&text, 1);
        assert!(
            message.contains("record 1") && message.contains("\"broken\""),
            "{message}"
        );
        assert!(message.contains("missing \"conversations\""), "{message}");

        let message = fixture.get_error(
            r#"[{"id": "r", "conversations": [{"from": "human", "value": "q"}, {"from": "system", "value": "s"}]}]"#,
        );
        assert!(
            message.contains("record 0 (id \"r\")") && message.contains("turn 1"),
            "{message}"
        );
        assert!(message.contains("\"system\""), "{message}");

        let message = fixture.get_error(r#"[{"id": "t", "conversations": [{"from": "human"}]}]"#);
        assert!(
            message.contains("record 0") && message.contains("value"),
            "{message}"
        );

        let message = fixture.get_error(r#"[{"id": "e", "conversations": []}]"#);
        assert!(message.contains("empty"), "{message}");

        // Placeholders that do not match the image, a mask without one.
        for (record, says) in [
            (
                r#""image": "a.png", "conversations": [{"from": "human", "value": "<image> <image> q"}, {"from": "gpt", "value": "a"}]"#,
                "2 <image> placeholders",
            ),
            (
                r#""conversations": [{"from": "human", "value": "<image> q"}, {"from": "gpt", "value": "a"}]"#,
                "has no \"image\"",
            ),
            (
                r#""image": "a.png", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "<image>"}]"#,
                "turn 1 is an answer holding <image>",
            ),
            (
                r#""mask": "m.png", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]"#,
                "has a \"mask\" but no \"image\"",
            ),
        ] {
            let message = fixture.get_error(&format!(r#"[{{"id": "p", {record}}}]"#));
            assert!(
                message.contains("record 0 (id \"p\")") && message.contains(says),
                "{says}: {message}"
            );
        }

        let message = fixture.open_error(r#"[42]"#);
        assert!(
            message.contains("record 0") && message.contains("object"),
            "{message}"
        );
    }

    #[test]
    fn missing_image_is_reported_with_its_path() {
        let fixture = Fixture::new();
        let message = fixture.get_error(&format!(
            r#"[{{"id": "m", "image": "img/nope.png", "conversations": {CONVERSATION}}}]"#
        ));
        assert!(
            message.contains("nope.png") && message.contains("does not exist"),
            "{message}"
        );
        assert!(message.contains("record 0 (id \"m\")"), "{message}");

        // A missing mask is a missing mask, not a missing image.
        fixture.write_image("img/a.png", 4, 3);
        let message = fixture.get_error(&format!(
            r#"[{{"id": "k", "image": "img/a.png", "mask": "img/gone.png", "conversations": {CONVERSATION}}}]"#
        ));
        assert!(
            message.contains(": mask ") && message.contains("gone.png does not exist"),
            "{message}"
        );
    }

    #[test]
    fn truncated_png_is_a_corrupt_image() {
        let fixture = Fixture::new();
        fixture.write_image("img/full.png", 16, 16);
        let bytes = std::fs::read(fixture.path("img/full.png")).unwrap();
        std::fs::write(fixture.path("img/cut.png"), &bytes[..bytes.len() / 2]).unwrap();
        let message = fixture.get_error(&format!(
            r#"[{{"id": "c", "image": "img/cut.png", "conversations": {CONVERSATION}}}]"#
        ));
        assert!(message.contains("cut.png: corrupt image: "), "{message}");

        std::fs::write(fixture.path("img/text.png"), b"not an image at all").unwrap();
        let message = fixture.get_error(&format!(
            r#"[{{"id": "t", "image": "img/text.png", "conversations": {CONVERSATION}}}]"#
        ));
        assert!(message.contains("text.png: corrupt image: "), "{message}");
    }

    #[test]
    fn coco_rle_masks_are_read_in_either_form() {
        let fixture = Fixture::new();
        fixture.write_image("img/a.png", 4, 3);
        let path = fixture.write_json(&format!(
            r#"[{{"id": "c", "image": "img/a.png", "mask": {{"size": [3, 4], "counts": "32112"}}, "conversations": {CONVERSATION}}},
                {{"id": "l", "image": "img/a.png", "mask": {{"size": [3, 4], "counts": [3, 2, 1, 3, 3]}}, "conversations": {CONVERSATION}}}]"#
        ));
        let dataset = LlavaDataset::open(&path, None).unwrap();
        let compressed = dataset.get(0).unwrap().mask.unwrap();
        let listed = dataset.get(1).unwrap().mask.unwrap();
        assert_eq!(compressed, listed);
        assert_eq!(mask::area(&compressed), 5);
        assert_eq!(compressed.get_pixel(2, 2).0[0], mask::INSIDE);
        assert_eq!(compressed.get_pixel(0, 0).0[0], 0);

        // The RLE's size must be the image's; bad counts are refused with the reason.
        let message = fixture.get_error(&format!(
            r#"[{{"id": "w", "image": "img/a.png", "mask": {{"size": [4, 3], "counts": [12]}}, "conversations": {CONVERSATION}}}]"#
        ));
        assert!(
            message.contains("3x4") && message.contains("4x3"),
            "{message}"
        );
        let message = fixture.get_error(&format!(
            r#"[{{"id": "b", "image": "img/a.png", "mask": {{"size": [3, 4], "counts": [3, 2]}}, "conversations": {CONVERSATION}}}]"#
        ));
        assert!(
            message.contains("COCO RLE") && message.contains("cover 5 pixels"),
            "{message}"
        );
    }

    #[test]
    fn mask_size_mismatch_names_both_sizes() {
        let fixture = Fixture::new();
        fixture.write_image("img/a.png", 4, 3);
        GrayImage::new(5, 5)
            .save(fixture.path("img/m.png"))
            .unwrap();
        let message = fixture.get_error(&format!(
            r#"[{{"id": "s", "image": "img/a.png", "mask": "img/m.png", "conversations": {CONVERSATION}}}]"#
        ));
        assert!(
            message.contains("5x5") && message.contains("4x3"),
            "{message}"
        );
        assert!(
            message.contains("m.png") && message.contains("a.png"),
            "{message}"
        );

        let message = fixture.get_error(&format!(
            r#"[{{"id": "n", "mask": "img/m.png", "conversations": {CONVERSATION}}}]"#
        ));
        assert!(message.contains("no \"image\""), "{message}");
    }

    #[test]
    fn write_then_read_round_trips_records() {
        let fixture = Fixture::new();
        let records = vec![
            LlavaRecord {
                id: "x".to_owned(),
                image: None,
                conversations: vec![
                    Turn::human("Q?"),
                    Turn::gpt("A."),
                    Turn::human("More?"),
                    Turn::gpt("No."),
                ],
                mask: None,
                region_box: None,
                points: None,
                family: Some("chat".to_owned()),
                meta: [("k".to_owned(), "v".to_owned())].into(),
            },
            LlavaRecord {
                id: "y".to_owned(),
                image: None,
                conversations: vec![Turn::human("Only a question")],
                mask: None,
                region_box: None,
                points: None,
                family: None,
                meta: BTreeMap::new(),
            },
        ];
        let path = fixture.path("out.json");
        write_llava_json(&path, &records).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("\"mask\"") && !text.contains("\"image\""),
            "absent fields are omitted"
        );
        assert!(text.contains("\"from\": \"human\""));
        let dataset = LlavaDataset::open(&path, None).unwrap();
        let read: Vec<LlavaRecord> = dataset.records().collect::<Result<_, _>>().unwrap();
        assert_eq!(read, records);
    }
}
