use super::*;
use crate::fixture::write_random_sam;

fn teacher() -> (tempfile::TempDir, SamTeacher) {
    let dir = tempfile::tempdir().unwrap();
    write_random_sam(dir.path(), 3).unwrap();
    let teacher = SamTeacher::load(dir.path()).unwrap();
    (dir, teacher)
}

fn picture(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x * 7 % 256) as u8,
            (y * 11 % 256) as u8,
            ((x + y) * 5 % 256) as u8,
        ])
    })
}

#[test]
fn the_encoder_size_is_read_off_the_weights() {
    let (_dir, teacher) = teacher();
    assert_eq!(
        teacher.encoder_size(),
        &EncoderSize::Vit {
            width: 32,
            depth: 1,
            heads: 1,
            global: vec![]
        }
    );
}

#[test]
fn box_and_point_prompts_give_binary_masks_at_the_image_size() {
    let (_dir, teacher) = teacher();
    let image = picture(40, 30);
    for prompt in [
        Prompt::Box([5.0, 4.0, 30.0, 20.0]),
        Prompt::Points(vec![[12.0, 10.0], [20.0, 15.0]]),
    ] {
        let mask = teacher.segment(&image, &prompt).unwrap();
        assert_eq!(mask.dimensions(), (40, 30));
        assert!(mask
            .pixels()
            .all(|p| p.0[0] == 0 || p.0[0] == vlmkit_data::mask::INSIDE));
        // Inference is deterministic.
        assert_eq!(teacher.segment(&image, &prompt).unwrap(), mask);
    }
}

#[test]
fn a_dataset_gets_masks_for_its_prompted_records() {
    let (_sam, teacher) = teacher();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("img")).unwrap();
    picture(24, 16).save(dir.path().join("img/a.png")).unwrap();
    let conversation = r#"[{"from": "human", "value": "<image>\nWhere is the cat?"}, {"from": "gpt", "value": "left"}]"#;
    std::fs::write(
        dir.path().join("data.json"),
        format!(
            r#"[{{"id": "boxed", "image": "img/a.png", "box": [2, 2, 12, 10], "conversations": {conversation}}},
                {{"id": "pointed/1", "image": "img/a.png", "points": [[5, 5]], "conversations": {conversation}}},
                {{"id": "plain", "image": "img/a.png", "conversations": {conversation}}},
                {{"id": "text", "conversations": [{{"from": "human", "value": "Hi"}}, {{"from": "gpt", "value": "Hello"}}]}}]"#
        ),
    )
    .unwrap();
    let dataset = LlavaDataset::open(dir.path().join("data.json"), None).unwrap();
    let out = dir.path().join("data.masks.json");
    let mut calls = 0;
    let summary =
        label_dataset(&dataset, &teacher, "masks", &out, false, |_, _| calls += 1).unwrap();
    assert_eq!(
        summary,
        LabelSummary {
            labelled: 2,
            kept: 0,
            unprompted: 2
        }
    );
    assert!(calls >= 4);
    assert!(dir.path().join("masks/boxed.png").is_file());
    assert!(dir.path().join("masks/pointed_1.png").is_file());
    let labelled = LlavaDataset::open(&out, None).unwrap();
    assert_eq!(
        labelled.record(0).unwrap().mask,
        Some(MaskRef::Path("masks/boxed.png".into()))
    );
    assert_eq!(
        labelled.get(1).unwrap().mask.unwrap().dimensions(),
        (24, 16)
    );
    assert!(labelled.record(2).unwrap().mask.is_none());
    // Running again keeps the masks unless asked to replace them.
    let again = label_dataset(&labelled, &teacher, "masks", &out, false, |_, _| {}).unwrap();
    assert_eq!((again.labelled, again.kept), (0, 2));
}

#[test]
fn what_is_not_a_sam_checkpoint_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let err = SamTeacher::load(dir.path()).err().unwrap().to_string();
    assert!(err.contains("no .safetensors file"), "{err}");

    std::fs::write(dir.path().join("model.safetensors"), b"not safetensors").unwrap();
    let err = SamTeacher::load(dir.path()).err().unwrap().to_string();
    assert!(err.contains("not a readable safetensors file"), "{err}");

    let other = HashMap::from([(
        "encoder.weight".to_string(),
        Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
    )]);
    candle_core::safetensors::save(&other, dir.path().join("model.safetensors")).unwrap();
    let err = SamTeacher::load(dir.path()).err().unwrap().to_string();
    assert!(err.contains("not a Segment Anything checkpoint"), "{err}");
}
