//! Configuration of the shapes world.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::scene::{Color, Shape};
use super::{Family, Split};

/// The largest side a built-in image is drawn at.
pub const MAX_IMAGE_SIZE: u32 = 2048;

/// Settings of the procedural shapes dataset. Every field has a default, so an empty
/// TOML table is a valid configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShapesConfig {
    /// Base seed; together with split and index it determines every sample.
    pub seed: u64,
    /// Side of the square image in pixels.
    pub image_size: u32,
    /// Cells per side; objects and the glyph each occupy one cell, aligned with the
    /// vision transformer's patches when `image_size / grid` is the patch size.
    pub grid: u32,
    /// Objects per scene are drawn uniformly from `1..=max_objects`.
    pub max_objects: u32,
    /// Probability that a scene (other than an OCR question's) contains a letter.
    pub glyph_prob: f64,
    /// Letters a glyph is drawn from (uppercase A–Z).
    pub glyph_letters: String,
    /// Amplitude of per-pixel noise in 8-bit levels (background and colours).
    pub noise: f64,
    /// Relative weight of each question family; families not listed are not asked.
    pub families: BTreeMap<String, f64>,
    /// Relative frequency of each colour; when set, colours not listed never appear.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub color_weights: Option<BTreeMap<String, f64>>,
    /// Relative frequency of each shape; when set, shapes not listed never appear.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shape_weights: Option<BTreeMap<String, f64>>,
    /// A scene is in the eval split iff its key's hash is divisible by this.
    pub eval_modulus: u64,
    /// Nominal split size (one epoch); defaults to 100 000 for train and 1 000 for eval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
    /// How "no" existence questions pick their absent object; defaults to
    /// `matched` for train and `pope` for eval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub existence_negatives: Option<NegativeSampling>,
    /// Where the `<image>` placeholder goes in the user's turn.
    pub image_placement: ImagePlacement,
    /// Smallest object side as a fraction of the cell (objects span from it to the
    /// whole cell). At 5 of 8 pixels a rasterised circle is nearly a square.
    pub min_object_fraction: f64,
}

/// Where the image sits relative to the question. LLaVA's instruction data has
/// both. With causal attention the placement matters: with the image first, every
/// question token can look up the objects it names, so a two-object question has
/// its lookups done by the time the answer is due.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImagePlacement {
    /// `<image>\nQuestion` (LLaVA-1.5's usual form).
    #[default]
    Before,
    /// `Question\n<image>`: visual tokens can attend to the question.
    After,
}

/// How absent objects are chosen for "no" existence questions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NegativeSampling {
    /// POPE's three samplers (random, popular, adversarial), each a third: the
    /// evaluation protocol. Popular negatives make frequent objects "no" more often
    /// than "yes", so the question alone predicts the answer.
    Pope,
    /// An absent object drawn with the frequency objects occur with, so "yes" and
    /// "no" questions name the same objects equally often and only the image
    /// tells them apart: what a model should be trained on.
    Matched,
}

/// Default colour frequencies: deliberately skewed so POPE's "popular" negatives
/// (the most frequent absent objects) differ from random ones.
pub const DEFAULT_COLOR_WEIGHTS: [(Color, f64); 6] = [
    (Color::Red, 3.0),
    (Color::Green, 2.0),
    (Color::Blue, 2.0),
    (Color::Yellow, 1.5),
    (Color::Purple, 1.0),
    (Color::Orange, 1.0),
];

/// Default shape frequencies, skewed for the same reason as the colours.
pub const DEFAULT_SHAPE_WEIGHTS: [(Shape, f64); 3] = [
    (Shape::Circle, 2.0),
    (Shape::Square, 1.5),
    (Shape::Triangle, 1.0),
];

pub const DEFAULT_TRAIN_SAMPLES: u64 = 100_000;
pub const DEFAULT_EVAL_SAMPLES: u64 = 1_000;

/// Smallest cell that fits the 5×7 glyphs and a recognisable shape.
pub const MIN_CELL_SIZE: u32 = 8;
/// Upper bound on `noise`: beyond this colours start to blur into each other.
pub const MAX_NOISE: f64 = 64.0;

impl Default for ShapesConfig {
    fn default() -> Self {
        let families = Family::ALL
            .iter()
            .map(|f| {
                (
                    f.name().to_owned(),
                    if *f == Family::Describe { 3.0 } else { 1.0 },
                )
            })
            .collect();
        ShapesConfig {
            seed: 0,
            image_size: 32,
            grid: 4,
            max_objects: 4,
            glyph_prob: 0.3,
            glyph_letters: "ABCDEFGH".to_owned(),
            noise: 6.0,
            families,
            color_weights: None,
            shape_weights: None,
            eval_modulus: 8,
            samples: None,
            existence_negatives: None,
            image_placement: ImagePlacement::default(),
            min_object_fraction: 0.75,
        }
    }
}

/// An invalid [`ShapesConfig`]; the message names the offending field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShapesConfigError {
    #[error("shapes config: unknown {kind} `{name}` in `{field}` (expected one of: {expected})")]
    UnknownName {
        field: &'static str,
        kind: &'static str,
        name: String,
        expected: String,
    },
    #[error("shapes config: `{field}` {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ShapesConfigError {
    ShapesConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Weights resolved from names to enum order, after validation.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ResolvedWeights {
    pub families: Vec<f64>,
    pub colors: Vec<f64>,
    pub shapes: Vec<f64>,
    pub letters: Vec<char>,
}

fn check_weight(field: &'static str, name: &str, weight: f64) -> Result<(), ShapesConfigError> {
    if !weight.is_finite() || weight < 0.0 {
        return Err(invalid(
            field,
            format!("weight for `{name}` must be a finite number >= 0, got {weight}"),
        ));
    }
    Ok(())
}

/// Maps a name → weight table onto `all` (in enum order); unlisted names get 0.
fn resolve_named<T: Copy>(
    field: &'static str,
    kind: &'static str,
    table: &BTreeMap<String, f64>,
    all: &[T],
    name_of: impl Fn(T) -> &'static str,
) -> Result<Vec<f64>, ShapesConfigError> {
    let mut weights = vec![0.0; all.len()];
    for (name, &weight) in table {
        let Some(position) = all.iter().position(|&item| name_of(item) == name) else {
            return Err(ShapesConfigError::UnknownName {
                field,
                kind,
                name: name.clone(),
                expected: all
                    .iter()
                    .map(|&item| name_of(item))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        check_weight(field, name, weight)?;
        weights[position] = weight;
    }
    if weights.iter().all(|&w| w == 0.0) {
        return Err(invalid(field, "needs at least one positive weight"));
    }
    Ok(weights)
}

impl ShapesConfig {
    /// Nominal number of samples in `split` (the epoch length).
    pub fn samples_for(&self, split: Split) -> u64 {
        self.samples.unwrap_or(match split {
            Split::Train => DEFAULT_TRAIN_SAMPLES,
            Split::Eval => DEFAULT_EVAL_SAMPLES,
        })
    }

    /// How "no" existence questions choose their object in `split`.
    pub fn negatives_for(&self, split: Split) -> NegativeSampling {
        self.existence_negatives.unwrap_or(match split {
            Split::Train => NegativeSampling::Matched,
            Split::Eval => NegativeSampling::Pope,
        })
    }

    /// Smallest object side in pixels.
    pub fn min_object_size(&self) -> u32 {
        ((self.cell_size() as f64 * self.min_object_fraction).ceil() as u32)
            .clamp(1, self.cell_size())
    }

    /// Pixel side of one grid cell.
    pub fn cell_size(&self) -> u32 {
        self.image_size / self.grid.max(1)
    }

    /// Checks every field; the error names the first offending one.
    pub fn validate(&self) -> Result<(), ShapesConfigError> {
        self.resolve().map(|_| ())
    }

    pub(crate) fn resolve(&self) -> Result<ResolvedWeights, ShapesConfigError> {
        if !(self.min_object_fraction > 0.0 && self.min_object_fraction <= 1.0) {
            return Err(invalid(
                "min_object_fraction",
                format!("must be in (0, 1], got {}", self.min_object_fraction),
            ));
        }
        if self.grid < 2 || !self.grid.is_multiple_of(2) {
            // Positions are named by quadrant, which needs an even split of the grid.
            return Err(invalid(
                "grid",
                format!("must be an even number >= 2, got {}", self.grid),
            ));
        }
        // Every sample renders an image_size² RGB picture in memory.
        if self.image_size > MAX_IMAGE_SIZE {
            return Err(invalid(
                "image_size",
                format!(
                    "{} px is more than the {MAX_IMAGE_SIZE} px the built-in scenes are drawn at most (each image is image_size² × 3 bytes)",
                    self.image_size
                ),
            ));
        }
        if !self.image_size.is_multiple_of(self.grid) {
            return Err(invalid(
                "image_size",
                format!("{} is not divisible by grid {}", self.image_size, self.grid),
            ));
        }
        if self.cell_size() < MIN_CELL_SIZE {
            return Err(invalid(
                "image_size",
                format!(
                    "image_size / grid = {} px per cell, but cells need at least {MIN_CELL_SIZE} px",
                    self.cell_size()
                ),
            ));
        }
        let colors = match &self.color_weights {
            Some(table) => {
                resolve_named("color_weights", "color", table, &Color::ALL, Color::name)?
            }
            None => DEFAULT_COLOR_WEIGHTS.iter().map(|&(_, w)| w).collect(),
        };
        let shapes = match &self.shape_weights {
            Some(table) => {
                resolve_named("shape_weights", "shape", table, &Shape::ALL, Shape::name)?
            }
            None => DEFAULT_SHAPE_WEIGHTS.iter().map(|&(_, w)| w).collect(),
        };
        let cells = self.grid * self.grid;
        let possible_pairs = colors.iter().filter(|&&w| w > 0.0).count() as u32
            * shapes.iter().filter(|&&w| w > 0.0).count() as u32;
        if self.max_objects == 0 {
            return Err(invalid("max_objects", "must be at least 1"));
        }
        if self.max_objects > cells - 1 {
            // One cell always stays free for the glyph.
            return Err(invalid(
                "max_objects",
                format!(
                    "{} exceeds grid * grid - 1 = {}",
                    self.max_objects,
                    cells - 1
                ),
            ));
        }
        if self.max_objects > possible_pairs {
            return Err(invalid(
                "max_objects",
                format!(
                    "{} exceeds the {possible_pairs} distinct (color, shape) pairs with positive weight",
                    self.max_objects
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.glyph_prob) {
            return Err(invalid(
                "glyph_prob",
                format!("must be in [0, 1], got {}", self.glyph_prob),
            ));
        }
        if !self.noise.is_finite() || !(0.0..=MAX_NOISE).contains(&self.noise) {
            return Err(invalid(
                "noise",
                format!("must be in [0, {MAX_NOISE}], got {}", self.noise),
            ));
        }
        if self.eval_modulus < 2 {
            return Err(invalid(
                "eval_modulus",
                format!(
                    "must be at least 2 so both splits are non-empty, got {}",
                    self.eval_modulus
                ),
            ));
        }
        if self.samples == Some(0) {
            return Err(invalid("samples", "must be at least 1"));
        }

        let families = resolve_named(
            "families",
            "family",
            &self.families,
            &Family::ALL,
            Family::name,
        )?;
        let weight_of = |family: Family| families[family as usize];

        let mut letters: Vec<char> = Vec::new();
        for letter in self.glyph_letters.chars() {
            if !letter.is_ascii_uppercase() {
                return Err(invalid(
                    "glyph_letters",
                    format!("may only contain uppercase letters A-Z, found {letter:?}"),
                ));
            }
            if letters.contains(&letter) {
                return Err(invalid("glyph_letters", format!("lists {letter:?} twice")));
            }
            letters.push(letter);
        }
        if letters.is_empty() && (self.glyph_prob > 0.0 || weight_of(Family::Ocr) > 0.0) {
            return Err(invalid(
                "glyph_letters",
                "is empty but glyphs are enabled (glyph_prob > 0 or families.ocr > 0)",
            ));
        }
        if weight_of(Family::Relation) > 0.0 && self.max_objects < 2 {
            return Err(invalid("families", "`relation` needs max_objects >= 2"));
        }
        Ok(ResolvedWeights {
            families,
            colors,
            shapes,
            letters,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(error: ShapesConfigError) -> &'static str {
        match error {
            ShapesConfigError::UnknownName { field, .. }
            | ShapesConfigError::Invalid { field, .. } => field,
        }
    }

    #[test]
    fn defaults_are_valid_and_match_the_documented_values() {
        let config = ShapesConfig::default();
        config.validate().unwrap();
        assert_eq!(
            (config.image_size, config.grid, config.cell_size()),
            (32, 4, 8)
        );
        assert_eq!(config.families["describe"], 3.0);
        assert_eq!(config.families["ocr"], 1.0);
        assert_eq!(config.families.len(), Family::ALL.len());
        assert_eq!(config.samples_for(Split::Train), 100_000);
        assert_eq!(config.samples_for(Split::Eval), 1_000);
        let fixed = ShapesConfig {
            samples: Some(5),
            ..config
        };
        assert_eq!(fixed.samples_for(Split::Eval), 5);
    }

    #[test]
    fn empty_json_gives_defaults_and_unknown_fields_are_rejected() {
        let parsed: ShapesConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(parsed, ShapesConfig::default());
        let error = serde_json::from_str::<ShapesConfig>(r#"{"seeed": 1}"#).unwrap_err();
        assert!(error.to_string().contains("seeed"), "{error}");
        let parsed: ShapesConfig =
            serde_json::from_str(r#"{"seed": 9, "families": {"color": 2.0}}"#).unwrap();
        assert_eq!(parsed.seed, 9);
        assert_eq!(
            parsed.resolve().unwrap().families,
            vec![0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
    }

    #[test]
    fn serialisation_round_trips() {
        let config = ShapesConfig {
            seed: 3,
            color_weights: Some([("red".to_owned(), 2.0)].into()),
            ..ShapesConfig::default()
        };
        let json = serde_json::to_string(&config).unwrap();
        assert!(
            !json.contains("samples"),
            "unset options are omitted: {json}"
        );
        assert_eq!(serde_json::from_str::<ShapesConfig>(&json).unwrap(), config);
    }

    #[test]
    fn unknown_family_is_named() {
        let mut config = ShapesConfig::default();
        config.families.insert("colour".to_owned(), 1.0);
        let error = config.validate().unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("`colour`") && message.contains("families"),
            "{message}"
        );
        assert!(
            message.contains("color, count"),
            "lists the valid names: {message}"
        );
    }

    #[test]
    fn invalid_fields_are_named() {
        let base = ShapesConfig::default;
        let cases: Vec<(ShapesConfig, &str)> = vec![
            (
                ShapesConfig {
                    image_size: 30,
                    ..base()
                },
                "image_size",
            ),
            (
                ShapesConfig {
                    image_size: 16,
                    ..base()
                },
                "image_size",
            ),
            (
                ShapesConfig {
                    grid: 3,
                    image_size: 33,
                    ..base()
                },
                "grid",
            ),
            (ShapesConfig { grid: 0, ..base() }, "grid"),
            (
                ShapesConfig {
                    max_objects: 0,
                    ..base()
                },
                "max_objects",
            ),
            (
                ShapesConfig {
                    max_objects: 16,
                    ..base()
                },
                "max_objects",
            ),
            (
                ShapesConfig {
                    glyph_prob: 1.5,
                    ..base()
                },
                "glyph_prob",
            ),
            (
                ShapesConfig {
                    noise: f64::NAN,
                    ..base()
                },
                "noise",
            ),
            (
                ShapesConfig {
                    eval_modulus: 1,
                    ..base()
                },
                "eval_modulus",
            ),
            (
                ShapesConfig {
                    samples: Some(0),
                    ..base()
                },
                "samples",
            ),
            (
                ShapesConfig {
                    glyph_letters: "Ab".to_owned(),
                    ..base()
                },
                "glyph_letters",
            ),
            (
                ShapesConfig {
                    glyph_letters: "AA".to_owned(),
                    ..base()
                },
                "glyph_letters",
            ),
            (
                ShapesConfig {
                    glyph_letters: String::new(),
                    ..base()
                },
                "glyph_letters",
            ),
            (
                ShapesConfig {
                    max_objects: 1,
                    ..base()
                },
                "families",
            ),
            (
                ShapesConfig {
                    families: [("describe".to_owned(), -1.0)].into(),
                    ..base()
                },
                "families",
            ),
            (
                ShapesConfig {
                    families: BTreeMap::new(),
                    ..base()
                },
                "families",
            ),
            (
                ShapesConfig {
                    color_weights: Some([("pink".to_owned(), 1.0)].into()),
                    ..base()
                },
                "color_weights",
            ),
            (
                // One colour × three shapes = 3 pairs < 4 objects.
                ShapesConfig {
                    color_weights: Some([("red".to_owned(), 1.0)].into()),
                    ..base()
                },
                "max_objects",
            ),
            (
                ShapesConfig {
                    shape_weights: Some([("circle".to_owned(), 0.0)].into()),
                    ..base()
                },
                "shape_weights",
            ),
        ];
        for (config, expected_field) in cases {
            let error = config.validate().expect_err(expected_field);
            let message = error.to_string();
            assert!(message.contains(expected_field), "{message}");
            assert_eq!(field_of(error), expected_field, "{message}");
        }
    }

    #[test]
    fn partial_weight_tables_zero_the_rest() {
        let config = ShapesConfig {
            max_objects: 2,
            families: [("color".to_owned(), 1.0)].into(),
            shape_weights: Some([("square".to_owned(), 1.0)].into()),
            ..ShapesConfig::default()
        };
        let resolved = config.resolve().unwrap();
        assert_eq!(resolved.shapes, vec![0.0, 1.0, 0.0]);
        assert_eq!(
            resolved.letters,
            vec!['A', 'B', 'C', 'D', 'E', 'F', 'G', 'H']
        );
    }
}
