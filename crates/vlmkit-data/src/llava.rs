//! LLaVA-1.5 conversation JSON: reading (with lazy image decoding) and writing.
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
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageReader};
use serde::{Deserialize, Serialize};

use crate::error::{DataError, RecordRef};
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

/// A LLaVA JSON dataset: records parsed up front, images decoded on access.
#[derive(Clone, Debug)]
pub struct LlavaDataset {
    json_path: PathBuf,
    image_root: PathBuf,
    records: Vec<LlavaRecord>,
}

impl LlavaDataset {
    /// Parses `json_path`. Image and mask paths are relative to `image_root`, which
    /// defaults to the JSON file's directory. Records without an id get their index.
    pub fn open(
        json_path: impl AsRef<Path>,
        image_root: Option<PathBuf>,
    ) -> Result<Self, DataError> {
        let json_path = json_path.as_ref().to_path_buf();
        let text = std::fs::read_to_string(&json_path).map_err(|source| DataError::Io {
            path: json_path.clone(),
            source,
        })?;
        let values: Vec<serde_json::Value> =
            serde_json::from_str(&text).map_err(|error| DataError::Json {
                path: json_path.clone(),
                line: error.line(),
                column: error.column(),
                message: error.to_string(),
            })?;
        let records = values
            .into_iter()
            .enumerate()
            .map(|(index, value)| parse_record(&json_path, index, value))
            .collect::<Result<Vec<_>, _>>()?;
        let image_root = image_root.unwrap_or_else(|| {
            json_path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        });
        Ok(LlavaDataset {
            json_path,
            image_root,
            records,
        })
    }

    pub fn json_path(&self) -> &Path {
        &self.json_path
    }

    pub fn image_root(&self) -> &Path {
        &self.image_root
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn records(&self) -> &[LlavaRecord] {
        &self.records
    }

    /// The image of record `index`, decoded (`None` for a text-only record).
    pub fn image(&self, index: usize) -> Result<Option<image::RgbImage>, DataError> {
        let (record, record_ref) = self.record(index)?;
        Ok(self
            .record_image(record, &record_ref)?
            .map(|(image, _)| image))
    }

    /// Example `index` with its image and mask decoded.
    pub fn get(&self, index: usize) -> Result<Example, DataError> {
        let (record, record_ref) = self.record(index)?;
        let image = self.record_image(record, &record_ref)?;
        let mask = match (&record.mask, &image) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(DataError::MaskWithoutImage {
                    path: self.json_path.clone(),
                    record: record_ref,
                })
            }
            (Some(source), Some((image, image_path))) => {
                let (mask, mask_path) = match source {
                    MaskRef::Path(relative) => {
                        let mask_path = self.image_root.join(relative);
                        let decoded = self.decode(&mask_path, &record_ref)?.to_luma8();
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
    fn record(&self, index: usize) -> Result<(&LlavaRecord, RecordRef), DataError> {
        let record = self.records.get(index).ok_or(DataError::IndexOutOfRange {
            index,
            len: self.records.len(),
        })?;
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
                Ok((self.decode(&path, record_ref)?.to_rgb8(), path))
            })
            .transpose()
    }

    fn decode(&self, path: &Path, record: &RecordRef) -> Result<DynamicImage, DataError> {
        let corrupt = |reason: String| DataError::CorruptImage {
            path: self.json_path.clone(),
            record: record.clone(),
            image: path.to_path_buf(),
            reason,
        };
        let reader = ImageReader::open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                DataError::ImageNotFound {
                    path: self.json_path.clone(),
                    record: record.clone(),
                    image: path.to_path_buf(),
                }
            } else {
                DataError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        let reader = reader
            .with_guessed_format()
            .map_err(|e| corrupt(e.to_string()))?;
        reader.decode().map_err(|e| corrupt(e.to_string()))
    }
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
            let path = self.write_json(text);
            LlavaDataset::open(&path, None)
                .unwrap()
                .get(0)
                .unwrap_err()
                .to_string()
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
    fn missing_file_is_an_io_error_naming_it() {
        let error = LlavaDataset::open("/nonexistent/dir/data.json", None).unwrap_err();
        assert!(matches!(error, DataError::Io { .. }));
        assert!(error.to_string().contains("/nonexistent/dir/data.json"));
    }

    #[test]
    fn record_problems_name_the_record() {
        let fixture = Fixture::new();
        let message = fixture.open_error(&format!(
            r#"[{{"id": "ok", "conversations": {CONVERSATION}}}, {{"id": "broken", "image": "x.png"}}]"#
        ));
        assert!(
            message.contains("record 1") && message.contains("\"broken\""),
            "{message}"
        );
        assert!(message.contains("missing \"conversations\""), "{message}");

        let message = fixture.open_error(
            r#"[{"id": "r", "conversations": [{"from": "human", "value": "q"}, {"from": "system", "value": "s"}]}]"#,
        );
        assert!(
            message.contains("record 0 (id \"r\")") && message.contains("turn 1"),
            "{message}"
        );
        assert!(message.contains("\"system\""), "{message}");

        let message = fixture.open_error(r#"[{"id": "t", "conversations": [{"from": "human"}]}]"#);
        assert!(
            message.contains("record 0") && message.contains("value"),
            "{message}"
        );

        let message = fixture.open_error(r#"[{"id": "e", "conversations": []}]"#);
        assert!(message.contains("empty"), "{message}");

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
        assert_eq!(dataset.records(), records.as_slice());
    }
}
