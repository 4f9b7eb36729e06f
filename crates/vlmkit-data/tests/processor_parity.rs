//! Image processing against the reference: Pillow 12's bicubic resize and
//! transformers' CLIP and SigLIP processors (with LLaVA-1.5's pad-to-square), on
//! the PNGs and outputs `scripts/make-parity-fixtures.py` wrote to
//! tests/fixtures/preprocess/. Everything must match exactly.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use vlmkit_data::processor::ImageProcessor;
use vlmkit_data::resample::resize_bicubic;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/preprocess")
}

fn png(name: &str) -> image::RgbImage {
    image::open(fixtures().join(name)).unwrap().to_rgb8()
}

#[test]
fn bicubic_resize_is_pillows_to_the_bit() {
    let bytes = std::fs::read(fixtures().join("expected.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&bytes).unwrap();
    let mut cases = 0;
    for (name, view) in expected.tensors() {
        let Some(sizes) = name.strip_prefix("resize.") else {
            continue;
        };
        let (source, target) = sizes.split_once('.').unwrap();
        let (w, h) = target.split_once('x').unwrap();
        let (w, h): (u32, u32) = (w.parse().unwrap(), h.parse().unwrap());
        assert_eq!(view.dtype(), Dtype::U8);
        assert_eq!(view.shape(), [h as usize, w as usize, 3]);
        let ours = resize_bicubic(&png(&format!("resize-{source}.png")), w, h);
        let differing = ours
            .as_raw()
            .iter()
            .zip(view.data())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differing,
            0,
            "{name}: {differing} of {} bytes differ",
            view.data().len()
        );
        cases += 1;
    }
    // Down, up, mixed, and non-integer factors.
    assert_eq!(cases, 4);
}

#[test]
fn clip_siglip_and_llava_pad_give_transformers_pixel_values() {
    let bytes = std::fs::read(fixtures().join("expected.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&bytes).unwrap();
    let clip = ImageProcessor::from_preprocessor_config(&fixtures().join("clip")).unwrap();
    let siglip = ImageProcessor::from_preprocessor_config(&fixtures().join("siglip")).unwrap();
    assert_eq!(clip, ImageProcessor::clip(48, 40));
    assert_eq!(siglip, ImageProcessor::siglip(36));
    for image in ["wide", "tall", "small"] {
        let input = png(&format!("{image}.png"));
        for (name, processor) in [
            ("clip", clip.clone()),
            ("clip-pad", clip.clone().with_pad_to_square()),
            ("siglip", siglip.clone()),
        ] {
            let key = format!("{name}.{image}");
            let view = expected.tensor(&key).unwrap();
            let (ours, (h, w)) = processor.pixel_values(&input);
            assert_eq!(view.shape(), [3, h, w], "{key}");
            let theirs: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            let worst = ours
                .iter()
                .zip(&theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert_eq!(worst, 0.0, "{key}: differs by up to {worst}");
        }
    }
}

#[test]
fn a_processor_config_vlmkit_cannot_follow_is_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixtures().join("clip/preprocessor_config.json")).unwrap();
    std::fs::write(
        dir.path().join("preprocessor_config.json"),
        text.replace("\"resample\": 3", "\"resample\": 2"),
    )
    .unwrap();
    let err = ImageProcessor::from_preprocessor_config(dir.path()).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("`resample`: 2: only bicubic (3) resampling is implemented"),
        "{err}"
    );
}
