//! The built-in procedural dataset: coloured shapes and letters on a grid, with seven
//! families of questions about them.
//!
//! Every sample is a pure function of `(config, split, index)`: its random stream is
//! seeded from a hash of the three, so training can resume at any data position and
//! see bit-identical samples, and samples can be generated in any order or in parallel.
//! Train and eval never share a scene: a scene's split is decided by a hash of its
//! canonical key, and each split redraws until it gets one of its own scenes.

pub mod config;
mod questions;
mod render;
pub mod scene;

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use image::{GrayImage, RgbImage};
use serde::{Deserialize, Serialize};

use crate::example::Example;
use crate::mask;
pub use config::{ImagePlacement, NegativeSampling, ShapesConfig, ShapesConfigError};
use questions::{text, CountSubject, MaskTarget, Plan};
pub use questions::{PopeMode, Relation};
pub use render::shape_covers;
use scene::SceneSampler;
pub use scene::{Cell, Color, Quadrant, Scene, SceneGlyph, SceneKey, SceneObject, Shape};
use vlmkit_core::rng::{hash_words, Rng};

/// Which half of the world a dataset draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Eval,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Eval => "eval",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Question families.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Describe,
    Color,
    Count,
    Position,
    Existence,
    Relation,
    Ocr,
}

impl Family {
    /// All families, in declaration order (the order of `ResolvedWeights::families`).
    pub const ALL: [Family; 7] = [
        Family::Describe,
        Family::Color,
        Family::Count,
        Family::Position,
        Family::Existence,
        Family::Relation,
        Family::Ocr,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::Describe => "describe",
            Family::Color => "color",
            Family::Count => "count",
            Family::Position => "position",
            Family::Existence => "existence",
            Family::Relation => "relation",
            Family::Ocr => "ocr",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for parsing an unknown family name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown question family `{0}`")]
pub struct UnknownFamily(pub String);

impl FromStr for Family {
    type Err = UnknownFamily;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Family::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| UnknownFamily(name.to_owned()))
    }
}

/// One generated question about one generated image.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// E.g. `"shapes-train-000123"`.
    pub id: String,
    pub split: Split,
    pub index: u64,
    pub family: Family,
    /// POPE subset, for existence questions only.
    pub pope: Option<PopeMode>,
    pub question: String,
    pub answer: String,
    pub image: RgbImage,
    /// What the question is about (255 = inside); `None` for `describe`, negative
    /// existence answers and zero counts.
    pub mask: Option<GrayImage>,
    pub scene: Scene,
    /// Where the image goes relative to the question in [`Sample::to_example`].
    pub image_placement: ImagePlacement,
    /// The answers a multiple-choice question offers (empty for open questions);
    /// scorers use it for the chance baseline.
    pub options: Vec<String>,
    /// How many answers the family can have in this world (colours drawn,
    /// counts 0 to `max_objects`, quadrants, letters); 0 for descriptions.
    /// Scorers use it for an open question's chance.
    pub answer_count: usize,
}

impl Sample {
    /// The sample as a one-turn LLaVA conversation with `family`, `answer` and `pope`
    /// in the metadata.
    pub fn to_example(&self) -> Example {
        let mut example = Example::single_turn(
            self.id.clone(),
            Some(self.image.clone()),
            &self.question,
            self.answer.clone(),
        );
        if self.image_placement == ImagePlacement::After {
            example.turns[0].value = format!("{}\n{}", self.question, crate::IMAGE_TOKEN);
        }
        example.mask = self.mask.clone();
        example.family = Some(self.family.name().to_owned());
        example
            .meta
            .insert("family".to_owned(), self.family.name().to_owned());
        example
            .meta
            .insert("answer".to_owned(), self.answer.clone());
        if !self.options.is_empty() {
            example
                .meta
                .insert("options".to_owned(), self.options.join("|"));
        } else if self.answer_count > 0 {
            example
                .meta
                .insert("answer_count".to_owned(), self.answer_count.to_string());
        }
        if let Some(mode) = self.pope {
            example
                .meta
                .insert("pope".to_owned(), mode.name().to_owned());
        }
        example
    }
}

/// "Is there a red circle in the image?": the existence family's question.
pub(crate) fn existence_question(color: Color, shape: Shape) -> String {
    questions::text::existence_question(color, shape)
}

/// What a text-only question about a described scene asks for: LLaVA's
/// instruction for short-answer VQA, so that answers can be matched exactly.
pub const SHORT_ANSWER: &str = "Answer the question using a single word or phrase.";

impl Sample {
    /// The scene's description, as the `describe` family answers it: the count,
    /// then every object (and the letter) with its cell.
    pub fn description(&self) -> String {
        questions::describe(&self.scene)
    }

    /// The sample with its image replaced by the scene's description as text, and
    /// LLaVA's short-answer instruction: what a language model alone answers when
    /// handed the scene in words.
    pub fn to_scene_text_example(&self) -> Example {
        let mut example = self.to_example();
        example.image = None;
        example.mask = None;
        example.turns[0].value =
            format!("{}\n{}\n{SHORT_ANSWER}", self.description(), self.question);
        example
    }
}

/// Separates sample streams from every other use of `hash_words`.
const SAMPLE_DOMAIN: u64 = 0x5A3F_1E5E_ED00_0001;
/// Redraws allowed per sample before concluding the configuration cannot produce the
/// requested question; with any valid configuration a handful suffice.
const MAX_SCENE_ATTEMPTS: u32 = 100_000;

/// The shapes dataset for one split.
#[derive(Clone, Debug)]
pub struct ShapesDataset {
    config: ShapesConfig,
    split: Split,
    family_weights: Vec<f64>,
    sampler: SceneSampler,
}

impl ShapesDataset {
    /// Validates `config` and prepares the split.
    pub fn new(config: ShapesConfig, split: Split) -> Result<Self, ShapesConfigError> {
        let resolved = config.resolve()?;
        let sampler = SceneSampler {
            grid: config.grid,
            cell_size: config.cell_size(),
            min_object_size: config.min_object_size(),
            max_objects: config.max_objects,
            glyph_prob: config.glyph_prob,
            letters: resolved.letters,
            color_weights: resolved.colors,
            shape_weights: resolved.shapes,
        };
        Ok(ShapesDataset {
            config,
            split,
            family_weights: resolved.families,
            sampler,
        })
    }

    pub fn config(&self) -> &ShapesConfig {
        &self.config
    }

    pub fn split(&self) -> Split {
        self.split
    }

    /// Nominal size of the split (one epoch). Any `u64` index is valid in [`get`](Self::get);
    /// this only defines where an epoch ends.
    pub fn len(&self) -> u64 {
        self.config.samples_for(self.split)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sample `index`: a pure function of the config, the split and `index`.
    pub fn get(&self, index: u64) -> Sample {
        let stream_seed = hash_words(&[SAMPLE_DOMAIN, self.config.seed, self.split as u64, index]);
        let mut rng = Rng::new(stream_seed);
        let family = Family::ALL[rng
            .weighted(&self.family_weights)
            .expect("validated: some family has positive weight")];
        let plan = Plan::draw(
            family,
            &self.sampler,
            self.config.negatives_for(self.split),
            &mut rng,
        );

        let (scene, asked) = (0..MAX_SCENE_ATTEMPTS)
            .find_map(|_| {
                let scene = self.sampler.sample(&mut rng, plan.requirements());
                if scene.key().split(self.config.eval_modulus) != self.split {
                    return None;
                }
                let asked = plan.ask(&scene, &self.sampler, &mut rng)?;
                Some((scene, asked))
            })
            .unwrap_or_else(|| {
                panic!(
                    "shapes: no {} scene for a {family} question found in {MAX_SCENE_ATTEMPTS} draws; \
                     the configuration is too restrictive",
                    self.split
                )
            });

        let rendered = render::render(&scene, self.config.noise, &mut rng);
        let mask = match &asked.mask {
            MaskTarget::None => None,
            MaskTarget::Glyph => rendered.glyph_mask.clone(),
            MaskTarget::Objects(indices) => {
                let mut union = mask::empty(rendered.image.width(), rendered.image.height());
                for &i in indices {
                    union = mask::union(&union, &rendered.object_masks[i])
                        .expect("masks share the image size");
                }
                Some(union)
            }
        };
        Sample {
            id: format!("shapes-{}-{index:06}", self.split),
            split: self.split,
            index,
            family,
            pope: asked.pope,
            question: asked.question,
            answer: asked.answer,
            image: rendered.image,
            mask,
            scene,
            image_placement: self.config.image_placement,
            answer_count: self.answer_count(family, asked.options.len()),
            options: asked.options,
        }
    }

    /// How many answers `family` can have in this world (`offered` for a choice).
    fn answer_count(&self, family: Family, offered: usize) -> usize {
        let sampler = &self.sampler;
        match family {
            Family::Describe => 0,
            Family::Color => sampler.color_weights.iter().filter(|&&w| w > 0.0).count(),
            Family::Count => sampler.max_objects as usize + 1,
            Family::Position => scene::Quadrant::ALL.len(),
            Family::Ocr => sampler.letters.len(),
            Family::Existence | Family::Relation => offered,
        }
    }

    /// Samples `0..len()` in order.
    pub fn iter(&self) -> impl Iterator<Item = Sample> + '_ {
        (0..self.len()).map(|index| self.get(index))
    }
}

/// Punctuation that [`split_words`] separates into tokens of its own.
pub const PUNCTUATION: [char; 5] = ['.', ',', '?', ':', '!'];

/// Lowercases `text` and splits it into words and punctuation tokens: whitespace
/// separates tokens and each of [`PUNCTUATION`] is a token by itself.
pub fn split_words(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    for chunk in text.split_whitespace() {
        let mut word = String::new();
        for ch in chunk.chars() {
            if PUNCTUATION.contains(&ch) {
                if !word.is_empty() {
                    tokens.push(std::mem::take(&mut word));
                }
                tokens.push(ch.to_string());
            } else {
                word.extend(ch.to_lowercase());
            }
        }
        if !word.is_empty() {
            tokens.push(word);
        }
    }
    tokens
}

/// Every token (see [`split_words`]) that any question or answer template can produce
/// under `config`, sorted. Covers all families regardless of their weights, so one
/// word-level vocabulary serves any mix of families.
pub fn vocabulary(config: &ShapesConfig) -> Vec<String> {
    let letters: Vec<char> = config
        .glyph_letters
        .chars()
        .filter(char::is_ascii_uppercase)
        .collect();
    let max_objects = config.max_objects as usize;
    let mut texts: Vec<String> = vec![
        text::DESCRIBE.to_owned(),
        text::OCR.to_owned(),
        text::YES.to_owned(),
        text::NO.to_owned(),
        text::count_question(CountSubject::Objects),
    ];
    texts.extend((0..=max_objects).map(|n| n.to_string()));
    texts.extend((1..=max_objects).map(text::count_sentence));
    for quadrant in Quadrant::ALL {
        texts.push(quadrant.name().to_owned());
    }
    let cells: Vec<Cell> = (0..config.grid)
        .flat_map(|row| (0..config.grid).map(move |col| Cell { row, col }))
        .collect();
    for &cell in &cells {
        texts.extend(letters.iter().map(|&l| text::glyph_sentence(l, cell)));
    }
    texts.extend(letters.iter().map(|&l| text::letter_answer(l)));
    for shape in Shape::ALL {
        texts.push(text::color_question(shape));
        texts.push(text::count_question(CountSubject::Shape(shape)));
    }
    for color in Color::ALL {
        texts.push(color.name().to_owned());
        texts.push(text::count_question(CountSubject::Color(color)));
        for shape in Shape::ALL {
            texts.push(text::position_question(color, shape));
            texts.push(text::existence_question(color, shape));
            texts.extend(
                cells
                    .iter()
                    .map(|&cell| text::object_sentence(color, shape, cell)),
            );
        }
    }
    for relation in Relation::ALL {
        // Both objects' words are covered above; the relation phrase is what varies.
        texts.push(text::relation_question(
            (Color::Red, Shape::Circle),
            relation,
            (Color::Blue, Shape::Square),
        ));
    }
    let tokens: BTreeSet<String> = texts.iter().flat_map(|t| split_words(t)).collect();
    tokens.into_iter().collect()
}

#[cfg(test)]
mod tests;
