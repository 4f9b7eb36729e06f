//! Exporting a shapes split to disk as LLaVA JSON plus PNG images and masks, so it can
//! be inspected, shared, or trained on through the generic LLaVA reader.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::llava::{write_llava_json, LlavaRecord};
use crate::shapes::ShapesDataset;

/// What [`export_split`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSummary {
    /// `out_dir/<split>.json`.
    pub json_path: PathBuf,
    pub samples: u64,
    /// Samples that had a mask (and so a file under `masks/`).
    pub masks: u64,
    /// Samples per question family.
    pub families: BTreeMap<String, u64>,
}

/// Writes samples `0..count` of `dataset` to `out_dir`: `images/<id>.png`,
/// `masks/<id>.png` (only for samples with a mask) and `<split>.json` with paths
/// relative to `out_dir`. `count` may exceed the split's nominal length.
pub fn export_split(
    dataset: &ShapesDataset,
    count: u64,
    out_dir: impl AsRef<Path>,
) -> Result<ExportSummary, DataError> {
    let out_dir = out_dir.as_ref();
    for sub_dir in ["images", "masks"] {
        let path = out_dir.join(sub_dir);
        std::fs::create_dir_all(&path).map_err(|source| DataError::Io { path, source })?;
    }
    let mut records = Vec::with_capacity(count.min(1 << 20) as usize);
    let mut masks = 0;
    let mut families = BTreeMap::new();
    for index in 0..count {
        let sample = dataset.get(index);
        let image_relative = format!("images/{}.png", sample.id);
        vlmkit_plot::io::save_png_atomic(&sample.image, &out_dir.join(&image_relative))?;
        let mask_relative = match &sample.mask {
            Some(mask) => {
                let relative = format!("masks/{}.png", sample.id);
                vlmkit_plot::io::save_png_atomic(mask, &out_dir.join(&relative))?;
                masks += 1;
                Some(relative)
            }
            None => None,
        };
        *families.entry(sample.family.name().to_owned()).or_insert(0) += 1;
        records.push(LlavaRecord::from_example(
            &sample.to_example(),
            Some(image_relative),
            mask_relative,
        ));
    }
    let json_path = out_dir.join(format!("{}.json", dataset.split()));
    write_llava_json(&json_path, &records)?;
    Ok(ExportSummary {
        json_path,
        samples: count,
        masks,
        families,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llava::LlavaDataset;
    use crate::shapes::{ShapesConfig, Split};

    #[test]
    fn exported_split_reads_back_identically() {
        let dir = tempfile::tempdir().unwrap();
        let dataset = ShapesDataset::new(ShapesConfig::default(), Split::Eval).unwrap();
        let summary = export_split(&dataset, 50, dir.path()).unwrap();
        assert_eq!(summary.json_path, dir.path().join("eval.json"));
        assert_eq!(summary.samples, 50);
        assert_eq!(summary.families.values().sum::<u64>(), 50);

        let read_back = LlavaDataset::open(&summary.json_path, None).unwrap();
        assert_eq!(read_back.len(), 50);
        let mut masks = 0;
        for index in 0..50 {
            let expected = dataset.get(index as u64).to_example();
            let actual = read_back.get(index).unwrap();
            assert_eq!(actual, expected, "sample {index}");
            assert_eq!(actual.question(), expected.question());
            masks += actual.mask.is_some() as u64;
            let mask_file = dir
                .path()
                .join("masks")
                .join(format!("{}.png", expected.id));
            assert_eq!(mask_file.exists(), expected.mask.is_some());
        }
        assert_eq!(masks, summary.masks);
        assert!(
            masks > 0 && masks < 50,
            "describe questions have no mask, others do"
        );
        let pngs = std::fs::read_dir(dir.path().join("images"))
            .unwrap()
            .count();
        assert_eq!(pngs, 50, "one image each, no temp files left");
    }

    #[test]
    fn export_into_an_unwritable_location_fails_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let dataset = ShapesDataset::new(ShapesConfig::default(), Split::Train).unwrap();
        let error = export_split(&dataset, 1, blocker.join("out")).unwrap_err();
        assert!(error.to_string().contains("file"), "{error}");
    }
}
