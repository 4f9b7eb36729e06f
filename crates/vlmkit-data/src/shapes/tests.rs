//! Properties of the generated dataset as a whole.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::*;

fn dataset(split: Split) -> ShapesDataset {
    ShapesDataset::new(ShapesConfig::default(), split).unwrap()
}

/// A dataset that asks only `family`.
fn only(family: Family, split: Split) -> ShapesDataset {
    let config = ShapesConfig {
        families: [(family.name().to_owned(), 1.0)].into(),
        ..ShapesConfig::default()
    };
    ShapesDataset::new(config, split).unwrap()
}

/// The pixels a scene object occupies, computed independently of the renderer's masks.
fn object_pixels(object: &SceneObject) -> BTreeSet<(u32, u32)> {
    let mut pixels = BTreeSet::new();
    for dy in 0..object.size {
        for dx in 0..object.size {
            if shape_covers(object.shape, object.size, dx, dy) {
                pixels.insert((object.x + dx, object.y + dy));
            }
        }
    }
    pixels
}

fn mask_pixels(mask: &GrayImage) -> BTreeSet<(u32, u32)> {
    mask.enumerate_pixels()
        .filter(|(_, _, p)| p.0[0] != 0)
        .map(|(x, y, _)| (x, y))
        .collect()
}

fn words(text: &str) -> Vec<String> {
    split_words(text)
}

fn named_color(word: &str) -> Option<Color> {
    Color::ALL.into_iter().find(|c| c.name() == word)
}

fn named_shape(word: &str) -> Option<Shape> {
    Shape::ALL
        .into_iter()
        .find(|s| s.name() == word || s.plural() == word)
}

/// The (colour, shape) pairs mentioned in a question, in order.
fn mentioned_objects(question: &str) -> Vec<(Color, Shape)> {
    let words = words(question);
    words
        .windows(2)
        .filter_map(|w| Some((named_color(&w[0])?, named_shape(&w[1])?)))
        .collect()
}

fn object_index(scene: &Scene, pair: (Color, Shape)) -> usize {
    scene
        .find(pair.0, pair.1)
        .expect("mentioned object is in the scene")
}

#[test]
fn samples_are_deterministic_per_index() {
    let a = dataset(Split::Train);
    let b = dataset(Split::Train);
    for index in [0, 1, 17, 12_345, u64::MAX] {
        let (x, y) = (a.get(index), b.get(index));
        assert_eq!(x.image.as_raw(), y.image.as_raw());
        assert_eq!(
            (&x.question, &x.answer, &x.id),
            (&y.question, &y.answer, &y.id)
        );
        assert_eq!(x, y);
    }
    // Order of access does not matter: no shared state between samples.
    let forward: Vec<Sample> = (0..5).map(|i| a.get(i)).collect();
    let backward: Vec<Sample> = (0..5).rev().map(|i| a.get(i)).collect();
    assert!(forward.iter().eq(backward.iter().rev()));
}

#[test]
fn different_indices_seeds_and_splits_differ() {
    let train = dataset(Split::Train);
    let images: HashSet<Vec<u8>> = (0..200).map(|i| train.get(i).image.into_raw()).collect();
    assert_eq!(images.len(), 200);

    let reseeded = ShapesDataset::new(
        ShapesConfig {
            seed: 1,
            ..ShapesConfig::default()
        },
        Split::Train,
    )
    .unwrap();
    assert_ne!(train.get(0).image, reseeded.get(0).image);
    assert_ne!(train.get(0).image, dataset(Split::Eval).get(0).image);
}

#[test]
fn ids_and_lengths() {
    let train = dataset(Split::Train);
    assert_eq!(train.get(123).id, "shapes-train-000123");
    assert_eq!(dataset(Split::Eval).get(7).id, "shapes-eval-000007");
    assert_eq!(train.get(1_234_567).id, "shapes-train-1234567");
    assert_eq!((train.len(), dataset(Split::Eval).len()), (100_000, 1_000));
    let small = ShapesDataset::new(
        ShapesConfig {
            samples: Some(3),
            ..ShapesConfig::default()
        },
        Split::Eval,
    )
    .unwrap();
    assert_eq!(
        small.iter().map(|s| s.index).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert!(!small.is_empty());
}

#[test]
fn invalid_config_is_rejected_by_the_constructor() {
    let config = ShapesConfig {
        grid: 5,
        ..ShapesConfig::default()
    };
    assert!(ShapesDataset::new(config, Split::Train).is_err());
}

#[test]
fn train_and_eval_never_share_a_scene() {
    let train = dataset(Split::Train);
    let eval = dataset(Split::Eval);
    let train_keys: HashSet<SceneKey> = (0..3_000).map(|i| train.get(i).scene.key()).collect();
    let eval_keys: HashSet<SceneKey> = (0..1_000).map(|i| eval.get(i).scene.key()).collect();
    assert!(train_keys.is_disjoint(&eval_keys));
    assert!(train_keys.iter().all(|k| k.split(8) == Split::Train));
    assert!(eval_keys.iter().all(|k| k.split(8) == Split::Eval));
    // The splits are large and varied, not a handful of repeated scenes.
    assert!(train_keys.len() > 2_500 && eval_keys.len() > 800);
}

#[test]
fn families_follow_their_weights() {
    let train = dataset(Split::Train);
    let n = 4_500;
    let mut counts: BTreeMap<Family, usize> = BTreeMap::new();
    for index in 0..n {
        *counts.entry(train.get(index).family).or_default() += 1;
    }
    for family in Family::ALL {
        let expected = if family == Family::Describe {
            3.0 / 9.0
        } else {
            1.0 / 9.0
        };
        let observed = counts[&family] as f64 / n as f64;
        assert!(
            (observed - expected).abs() < 0.025,
            "{family}: {observed:.3} vs {expected:.3}"
        );
    }
}

#[test]
fn family_display_and_parsing() {
    for family in Family::ALL {
        assert_eq!(family.to_string().parse::<Family>(), Ok(family));
        assert_eq!(
            serde_json::to_string(&family).unwrap(),
            format!("\"{family}\"")
        );
    }
    assert_eq!(
        "colour".parse::<Family>(),
        Err(UnknownFamily("colour".to_owned()))
    );
    assert_eq!(serde_json::to_string(&Split::Eval).unwrap(), "\"eval\"");
    assert_eq!(
        serde_json::to_string(&PopeMode::Adversarial).unwrap(),
        "\"adversarial\""
    );
}

#[test]
fn existence_is_balanced_within_every_pope_subset() {
    let ds = only(Family::Existence, Split::Eval);
    let mut table: BTreeMap<(PopeMode, bool), usize> = BTreeMap::new();
    let n = 3_000;
    for index in 0..n {
        let sample = ds.get(index);
        let pair = mentioned_objects(&sample.question)[0];
        let present = sample.scene.find(pair.0, pair.1).is_some();
        assert_eq!(
            sample.answer,
            if present { "yes" } else { "no" },
            "{}",
            sample.question
        );
        assert_eq!(sample.mask.is_some(), present);
        if let Some(mask) = &sample.mask {
            let object = &sample.scene.objects[object_index(&sample.scene, pair)];
            assert_eq!(mask_pixels(mask), object_pixels(object));
        }
        *table
            .entry((sample.pope.expect("existence has a POPE mode"), present))
            .or_default() += 1;
    }
    for mode in PopeMode::ALL {
        let yes = table[&(mode, true)] as f64;
        let no = table[&(mode, false)] as f64;
        let share = (yes + no) / n as f64;
        assert!(
            (share - 1.0 / 3.0).abs() < 0.04,
            "{mode}: {share:.3} of samples"
        );
        assert!(
            (yes / (yes + no) - 0.5).abs() < 0.06,
            "{mode}: {yes} yes vs {no} no"
        );
    }
}

#[test]
fn matched_training_negatives_leave_no_answer_in_the_question() {
    // Train split: "no" questions name absent objects with the frequency objects
    // occur with, so the best text-only guess (the majority answer per question)
    // stays near chance — unlike POPE's popular negatives.
    let per_question = |split: Split| {
        let ds = only(Family::Existence, split);
        let mut table: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        let n = 4_000;
        for index in 0..n {
            let sample = ds.get(index);
            if split == Split::Train {
                assert!(
                    sample.pope.is_none(),
                    "training existence questions carry no POPE mode"
                );
            }
            let e = table.entry(sample.question.clone()).or_default();
            if sample.answer == "yes" {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
        let best: usize = table.values().map(|&(y, n)| y.max(n)).sum();
        best as f64 / n as f64
    };
    let train = per_question(Split::Train);
    let eval = per_question(Split::Eval);
    assert!(
        train < 0.60,
        "text-only accuracy on train existence: {train:.3}"
    );
    assert!(
        eval > train + 0.03,
        "POPE negatives should be more text-predictable: {eval:.3} vs {train:.3}"
    );
}

#[test]
fn relation_answers_are_balanced_and_correct() {
    let ds = only(Family::Relation, Split::Train);
    let n = 2_000;
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    for index in 0..n {
        let sample = ds.get(index);
        let mentioned = mentioned_objects(&sample.question);
        assert_eq!(mentioned.len(), 2, "{}", sample.question);
        let a = object_index(&sample.scene, mentioned[0]);
        let b = object_index(&sample.scene, mentioned[1]);
        assert_ne!(a, b);
        let (ca, cb) = (sample.scene.objects[a].cell, sample.scene.objects[b].cell);
        let relation = Relation::ALL
            .into_iter()
            .find(|r| r.answer() == sample.answer)
            .expect("a relation answer");
        assert!(
            relation.holds(ca, cb),
            "{} -> {}",
            sample.question,
            sample.answer
        );
        // The question offers exactly the two answers of the relation's axis.
        let offered = if sample.question.contains("to the left or to the right of") {
            ["left", "right"]
        } else {
            assert!(
                sample.question.contains("above or below"),
                "{}",
                sample.question
            );
            ["above", "below"]
        };
        assert_eq!(sample.options, offered);
        assert_eq!(sample.to_example().meta["options"], offered.join("|"));
        *answers.entry(sample.answer.clone()).or_default() += 1;
        let expected: BTreeSet<_> = object_pixels(&sample.scene.objects[a])
            .union(&object_pixels(&sample.scene.objects[b]))
            .copied()
            .collect();
        assert_eq!(mask_pixels(sample.mask.as_ref().unwrap()), expected);
    }
    for answer in ["left", "right", "above", "below"] {
        let share = answers[answer] as f64 / n as f64;
        assert!((share - 0.25).abs() < 0.04, "{answer}: {share:.3}");
    }
}

#[test]
fn count_answers_are_correct_and_roughly_uniform() {
    let ds = only(Family::Count, Split::Train);
    let n = 3_000;
    let mut answers = [0usize; 5];
    let mut totals = 0;
    for index in 0..n {
        let sample = ds.get(index);
        let scene = &sample.scene;
        let words = words(&sample.question);
        let counted: Vec<usize> = (0..scene.objects.len())
            .filter(|&i| {
                let object = scene.objects[i];
                match (named_color(&words[2]), named_shape(&words[2])) {
                    (Some(color), _) => object.color == color,
                    (_, Some(shape)) => object.shape == shape,
                    _ => true,
                }
            })
            .collect();
        if words[2] == "objects" {
            totals += 1;
        }
        assert_eq!(
            sample.answer,
            counted.len().to_string(),
            "{}",
            sample.question
        );
        answers[counted.len()] += 1;
        let expected: BTreeSet<_> = counted
            .iter()
            .flat_map(|&i| object_pixels(&scene.objects[i]))
            .collect();
        match &sample.mask {
            None => assert!(counted.is_empty()),
            Some(mask) => assert_eq!(mask_pixels(mask), expected),
        }
    }
    assert!(
        (totals as f64 / n as f64 - 0.5).abs() < 0.04,
        "{totals} total-count questions"
    );
    for (answer, &count) in answers.iter().enumerate() {
        let share = count as f64 / n as f64;
        assert!(
            (share - 0.2).abs() < 0.04,
            "answer {answer}: {share:.3} ({answers:?})"
        );
    }
}

#[test]
fn color_and_position_answers_match_the_pixels() {
    let color_ds = only(Family::Color, Split::Eval);
    for index in 0..400 {
        let sample = color_ds.get(index);
        let shape = words(&sample.question)
            .iter()
            .find_map(|w| named_shape(w))
            .unwrap();
        assert_eq!(
            sample.scene.count_shape(shape),
            1,
            "asked about a unique shape"
        );
        let object = sample
            .scene
            .objects
            .iter()
            .find(|o| o.shape == shape)
            .unwrap();
        assert_eq!(sample.answer, object.color.name());
        let mask = sample.mask.as_ref().unwrap();
        assert_eq!(mask_pixels(mask), object_pixels(object));
        // The masked pixels' mean colour is nearest to the answer's nominal colour.
        let pixels = mask_pixels(mask);
        let mean = [0, 1, 2].map(|c| {
            pixels
                .iter()
                .map(|&(x, y)| sample.image.get_pixel(x, y).0[c] as f64)
                .sum::<f64>()
                / pixels.len() as f64
        });
        let distance = |color: Color| {
            color
                .rgb()
                .iter()
                .zip(mean)
                .map(|(&a, b)| (a as f64 - b).powi(2))
                .sum::<f64>()
        };
        let nearest = Color::ALL
            .into_iter()
            .min_by(|a, b| distance(*a).total_cmp(&distance(*b)))
            .unwrap();
        assert_eq!(nearest.name(), sample.answer);
    }

    let position_ds = only(Family::Position, Split::Train);
    let mut quadrants = BTreeMap::new();
    for index in 0..400 {
        let sample = position_ds.get(index);
        let pair = mentioned_objects(&sample.question)[0];
        let object = &sample.scene.objects[object_index(&sample.scene, pair)];
        assert_eq!(sample.answer, sample.scene.quadrant(object.cell).name());
        assert_eq!(
            mask_pixels(sample.mask.as_ref().unwrap()),
            object_pixels(object)
        );
        *quadrants.entry(sample.answer.clone()).or_insert(0) += 1;
    }
    assert_eq!(quadrants.len(), 4);
    assert!(quadrants.values().all(|&n| n > 60), "{quadrants:?}");
}

#[test]
fn ocr_reads_the_glyph_and_masks_its_cell() {
    let ds = only(Family::Ocr, Split::Train);
    let mut letters = BTreeSet::new();
    for index in 0..300 {
        let sample = ds.get(index);
        let glyph = sample.scene.glyph.expect("OCR scenes have a glyph");
        assert_eq!(sample.answer, glyph.letter.to_ascii_lowercase().to_string());
        assert!("abcdefgh".contains(&sample.answer));
        letters.insert(glyph.letter);
        let mask = mask_pixels(sample.mask.as_ref().unwrap());
        let (x0, y0) = (glyph.cell.col * 8, glyph.cell.row * 8);
        let cell: BTreeSet<_> = (y0..y0 + 8)
            .flat_map(|y| (x0..x0 + 8).map(move |x| (x, y)))
            .collect();
        assert_eq!(mask, cell);
        // The letter's strokes are drawn bright on the dark background.
        let rows = vlmkit_plot::font::glyph(glyph.letter).unwrap();
        for row in 0..7 {
            for col in 0..5 {
                let level = sample.image.get_pixel(glyph.x + col, glyph.y + row).0[0];
                if vlmkit_plot::font::glyph_pixel(&rows, col, row) {
                    assert!(level > 180, "stroke pixel is {level}");
                } else {
                    assert!(level < 80, "background pixel is {level}");
                }
            }
        }
    }
    assert_eq!(letters.len(), 8);
}

#[test]
fn describe_has_no_mask_and_glyphs_appear_at_the_configured_rate() {
    let ds = only(Family::Describe, Split::Train);
    let n = 2_000;
    let mut with_glyph = 0;
    for index in 0..n {
        let sample = ds.get(index);
        assert!(sample.mask.is_none());
        assert_eq!(sample.question, "Describe the image.");
        assert_eq!(sample.answer, questions::describe(&sample.scene));
        let count = sample.scene.objects.len();
        assert!(sample.answer.starts_with(&text::count_sentence(count)));
        assert_eq!(
            sample.answer.matches(" in row ").count(),
            count + sample.scene.glyph.is_some() as usize
        );
        with_glyph += sample.scene.glyph.is_some() as usize;
    }
    let rate = with_glyph as f64 / n as f64;
    assert!((rate - 0.3).abs() < 0.04, "glyph rate {rate}");
}

#[test]
fn object_counts_are_uniform_in_the_configured_range() {
    let ds = only(Family::Describe, Split::Train);
    let mut counts = [0usize; 5];
    for index in 0..2_000 {
        counts[ds.get(index).scene.objects.len()] += 1;
    }
    assert_eq!(counts[0], 0);
    for &count in &counts[1..] {
        assert!((count as f64 / 2_000.0 - 0.25).abs() < 0.04, "{counts:?}");
    }
}

#[test]
fn every_generated_token_is_in_the_vocabulary() {
    let config = ShapesConfig::default();
    let vocabulary: BTreeSet<String> = vocabulary(&config).into_iter().collect();
    for family in Family::ALL {
        let ds = only(family, Split::Train);
        for index in 0..300 {
            let sample = ds.get(index);
            for token in split_words(&sample.question)
                .into_iter()
                .chain(split_words(&sample.answer))
            {
                assert!(
                    vocabulary.contains(&token),
                    "{family}: `{token}` missing ({})",
                    sample.question
                );
            }
        }
    }
    // Nothing in the vocabulary is unexpected: all lowercase words, digits or punctuation.
    for token in &vocabulary {
        assert!(
            token
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                || (token.len() == 1 && PUNCTUATION.contains(&token.chars().next().unwrap())),
            "{token:?}"
        );
    }
}

#[test]
fn default_vocabulary_is_pinned() {
    // Word-level tokenizers and checkpoints depend on this list: change it deliberately.
    let vocabulary = vocabulary(&ShapesConfig::default());
    let expected = [
        ",",
        ".",
        "0",
        "1",
        "2",
        "3",
        "4",
        "?",
        "a",
        "above",
        "an",
        "are",
        "b",
        "below",
        "blue",
        "bottom",
        "c",
        "circle",
        "circles",
        "color",
        "column",
        "d",
        "describe",
        "e",
        "f",
        "g",
        "green",
        "h",
        "how",
        "image",
        "in",
        "is",
        "left",
        "letter",
        "many",
        "no",
        "object",
        "objects",
        "of",
        "or",
        "orange",
        "purple",
        "red",
        "right",
        "row",
        "square",
        "squares",
        "the",
        "there",
        "to",
        "top",
        "triangle",
        "triangles",
        "what",
        "where",
        "written",
        "yellow",
        "yes",
    ];
    assert_eq!(vocabulary, expected);
    assert_eq!(vocabulary.len(), 58);
}

#[test]
fn vocabulary_tracks_letters_and_object_counts() {
    let default = vocabulary(&ShapesConfig::default());
    assert!(!default.contains(&"k".to_owned()) && default.contains(&"h".to_owned()));
    let wider = vocabulary(&ShapesConfig {
        glyph_letters: "XYZ".to_owned(),
        max_objects: 6,
        ..ShapesConfig::default()
    });
    assert!(wider.contains(&"x".to_owned()) && wider.contains(&"6".to_owned()));
    assert!(!wider.contains(&"h".to_owned()));
    assert!(default.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
}

#[test]
fn split_words_separates_punctuation_and_lowercases() {
    assert_eq!(
        split_words("There are 3 objects. A red circle!"),
        ["there", "are", "3", "objects", ".", "a", "red", "circle", "!"]
    );
    assert_eq!(
        split_words("  What?yes,no:  "),
        ["what", "?", "yes", ",", "no", ":"]
    );
    assert!(split_words("").is_empty());
}

#[test]
fn to_example_builds_a_one_turn_conversation_with_metadata() {
    let ds = only(Family::Existence, Split::Eval);
    let sample = ds.get(3);
    let example = sample.to_example();
    assert_eq!(example.id, sample.id);
    assert_eq!(example.turns.len(), 2);
    // The default places the image first, as LLaVA-1.5 does.
    assert_eq!(
        example.turns[0].value,
        format!("<image>\n{}", sample.question)
    );
    let after = ShapesDataset::new(
        ShapesConfig {
            families: [("existence".to_owned(), 1.0)].into(),
            image_placement: ImagePlacement::After,
            ..ShapesConfig::default()
        },
        Split::Eval,
    )
    .unwrap();
    assert_eq!(
        after.get(3).to_example().turns[0].value,
        format!("{}\n<image>", sample.question)
    );
    assert_eq!(
        example.question().as_deref(),
        Some(sample.question.as_str())
    );
    assert_eq!(example.answer(), Some(sample.answer.as_str()));
    assert_eq!(example.image.as_ref(), Some(&sample.image));
    assert_eq!(example.mask, sample.mask);
    assert_eq!(example.family.as_deref(), Some("existence"));
    assert_eq!(example.meta["family"], "existence");
    assert_eq!(example.meta["answer"], sample.answer);
    assert_eq!(example.meta["pope"], sample.pope.unwrap().name());

    let describe = only(Family::Describe, Split::Eval).get(0).to_example();
    assert!(!describe.meta.contains_key("pope"));
}

#[test]
fn custom_worlds_work() {
    // A bigger grid with few colours, heavy noise and only two families.
    let config = ShapesConfig {
        image_size: 48,
        grid: 6,
        max_objects: 3,
        noise: 30.0,
        glyph_letters: "XYZ".to_owned(),
        families: [("count".to_owned(), 1.0), ("ocr".to_owned(), 1.0)].into(),
        color_weights: Some([("red".to_owned(), 1.0), ("blue".to_owned(), 1.0)].into()),
        eval_modulus: 3,
        ..ShapesConfig::default()
    };
    let ds = ShapesDataset::new(config, Split::Eval).unwrap();
    for index in 0..300 {
        let sample = ds.get(index);
        assert_eq!(sample.image.dimensions(), (48, 48));
        assert!(matches!(sample.family, Family::Count | Family::Ocr));
        assert!(sample
            .scene
            .objects
            .iter()
            .all(|o| matches!(o.color, Color::Red | Color::Blue)));
        assert_eq!(sample.scene.key().split(3), Split::Eval);
        if sample.family == Family::Ocr {
            assert!("xyz".contains(&sample.answer));
        }
    }
}

#[test]
fn open_questions_carry_how_many_answers_their_family_has() {
    let config = ShapesConfig::default();
    let colors = config::DEFAULT_COLOR_WEIGHTS
        .iter()
        .filter(|(_, w)| *w > 0.0)
        .count();
    for (family, expected) in [
        (Family::Color, colors),
        (Family::Count, config.max_objects as usize + 1),
        (Family::Position, 4),
        (Family::Ocr, config.glyph_letters.chars().count()),
    ] {
        let sample = only(family, Split::Eval).get(0);
        assert_eq!(sample.answer_count, expected, "{family}");
        assert_eq!(
            sample.to_example().meta["answer_count"],
            expected.to_string(),
            "{family}"
        );
    }
    // A choice carries its options instead; a description has no answer set.
    for family in [Family::Existence, Family::Relation, Family::Describe] {
        let example = only(family, Split::Eval).get(0).to_example();
        assert!(!example.meta.contains_key("answer_count"), "{family}");
    }
}
