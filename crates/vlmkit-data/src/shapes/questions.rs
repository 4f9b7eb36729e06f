//! Question families: English templates, answer balancing and POPE negative sampling.
//!
//! The text templates live in one place (`text`) and are used both to generate samples
//! and to enumerate the vocabulary, so the two cannot drift apart.

use serde::{Deserialize, Serialize};

use super::config::NegativeSampling;
use super::scene::{Cell, Color, Scene, SceneRequirements, SceneSampler, Shape};
use super::Family;
use vlmkit_core::rng::Rng;

/// POPE's negative samplers (Li et al., 2023), recorded for every existence question so
/// results can be reported per subset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PopeMode {
    /// An absent (colour, shape) pair chosen uniformly.
    Random,
    /// The absent pair with the highest prior frequency.
    Popular,
    /// An absent pair sharing colour or shape with present objects.
    Adversarial,
}

impl PopeMode {
    pub const ALL: [PopeMode; 3] = [PopeMode::Random, PopeMode::Popular, PopeMode::Adversarial];

    pub fn name(self) -> &'static str {
        match self {
            PopeMode::Random => "random",
            PopeMode::Popular => "popular",
            PopeMode::Adversarial => "adversarial",
        }
    }
}

impl std::fmt::Display for PopeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where one object's cell lies relative to another's (strict comparisons).
///
/// Relation questions are two-way choices along one axis, as GQA asks them: "Is the
/// red circle to the left or to the right of the blue square?" → "left". A yes/no
/// form ("Is the red circle to the left of the blue square?") makes the answer flip
/// with the asked relation on top of locating both objects; a from-scratch model
/// found no foothold in that (it stayed at chance over 4,500 steps in every setting
/// tried), while the choice form still asks for the same comparison of two objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    LeftOf,
    RightOf,
    Above,
    Below,
}

impl Relation {
    pub const ALL: [Relation; 4] = [
        Relation::LeftOf,
        Relation::RightOf,
        Relation::Above,
        Relation::Below,
    ];

    pub fn phrase(self) -> &'static str {
        match self {
            Relation::LeftOf => "to the left of",
            Relation::RightOf => "to the right of",
            Relation::Above => "above",
            Relation::Below => "below",
        }
    }

    /// The answer word ("left", "right", "above", "below").
    pub fn answer(self) -> &'static str {
        match self {
            Relation::LeftOf => "left",
            Relation::RightOf => "right",
            Relation::Above => "above",
            Relation::Below => "below",
        }
    }

    /// The two options a question about this relation's axis offers.
    pub fn options(self) -> [Relation; 2] {
        match self {
            Relation::LeftOf | Relation::RightOf => [Relation::LeftOf, Relation::RightOf],
            Relation::Above | Relation::Below => [Relation::Above, Relation::Below],
        }
    }

    pub fn holds(self, a: Cell, b: Cell) -> bool {
        match self {
            Relation::LeftOf => a.col < b.col,
            Relation::RightOf => a.col > b.col,
            Relation::Above => a.row < b.row,
            Relation::Below => a.row > b.row,
        }
    }
}

/// What a count question counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CountSubject {
    Objects,
    Shape(Shape),
    Color(Color),
}

/// The English templates.
pub(crate) mod text {
    use super::*;

    fn article(word: &str) -> &'static str {
        if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        }
    }

    fn capitalized(text: &str) -> String {
        let mut chars = text.chars();
        match chars.next() {
            Some(first) => first.to_uppercase().chain(chars).collect(),
            None => String::new(),
        }
    }

    /// "a red circle", "an orange square".
    pub fn object_phrase(color: Color, shape: Shape) -> String {
        format!(
            "{} {} {}",
            article(color.name()),
            color.name(),
            shape.name()
        )
    }

    pub const DESCRIBE: &str = "Describe the image.";
    pub const OCR: &str = "What letter is written in the image?";
    pub const YES: &str = "yes";
    pub const NO: &str = "no";

    pub fn count_sentence(count: usize) -> String {
        if count == 1 {
            "There is 1 object.".to_owned()
        } else {
            format!("There are {count} objects.")
        }
    }

    /// "in row 2, column 3" (1-based): descriptions name exact cells, so every
    /// description teaches where each object is to the cell, the precision spatial
    /// relations need (position questions ask only for the quadrant).
    pub fn cell_phrase(cell: Cell) -> String {
        format!("in row {}, column {}", cell.row + 1, cell.col + 1)
    }

    pub fn object_sentence(color: Color, shape: Shape, cell: Cell) -> String {
        format!(
            "{} {}.",
            capitalized(&object_phrase(color, shape)),
            cell_phrase(cell)
        )
    }

    pub fn glyph_sentence(letter: char, cell: Cell) -> String {
        format!(
            "The letter {} is {}.",
            letter.to_ascii_uppercase(),
            cell_phrase(cell)
        )
    }

    pub fn color_question(shape: Shape) -> String {
        format!("What color is the {}?", shape.name())
    }

    pub fn count_question(subject: CountSubject) -> String {
        match subject {
            CountSubject::Objects => "How many objects are there?".to_owned(),
            CountSubject::Shape(shape) => format!("How many {} are there?", shape.plural()),
            CountSubject::Color(color) => format!("How many {} objects are there?", color.name()),
        }
    }

    pub fn position_question(color: Color, shape: Shape) -> String {
        format!("Where is the {} {}?", color.name(), shape.name())
    }

    pub fn existence_question(color: Color, shape: Shape) -> String {
        format!("Is there {} in the image?", object_phrase(color, shape))
    }

    /// "Is the red circle to the left or to the right of the blue square?" /
    /// "Is the red circle above or below the blue square?" — the axis of `relation`.
    pub fn relation_question(a: (Color, Shape), relation: Relation, b: (Color, Shape)) -> String {
        let choice = match relation {
            Relation::LeftOf | Relation::RightOf => "to the left or to the right of",
            Relation::Above | Relation::Below => "above or below",
        };
        format!(
            "Is the {} {} {choice} the {} {}?",
            a.0.name(),
            a.1.name(),
            b.0.name(),
            b.1.name()
        )
    }

    pub fn letter_answer(letter: char) -> String {
        letter.to_ascii_lowercase().to_string()
    }
}

/// Which pixels a question's mask covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MaskTarget {
    None,
    /// Union of these scene objects (indices into `Scene::objects`).
    Objects(Vec<usize>),
    /// The glyph's cell.
    Glyph,
}

/// A question about a particular scene.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Asked {
    pub question: String,
    pub answer: String,
    pub pope: Option<PopeMode>,
    pub mask: MaskTarget,
    /// The answers a multiple-choice question offers (empty otherwise).
    pub options: Vec<String>,
}

/// The decisions made before a scene is drawn, so that redrawing a scene (to land in
/// the right split, or to make the question answerable) cannot skew the answer
/// distribution the plan promises.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Plan {
    Describe,
    Color,
    /// `None` = total object count; `Some(k)` = an attribute count with answer `k`.
    Count(Option<usize>),
    Position,
    Existence {
        present: bool,
        /// The POPE sampler, or `None` for frequency-matched negatives.
        mode: Option<PopeMode>,
    },
    /// Ask where the first object lies relative to the second; `relation` is the
    /// answer (drawn uniformly, so both options of each axis are equally likely).
    Relation {
        relation: Relation,
    },
    Ocr,
}

impl Plan {
    pub fn draw(
        family: Family,
        sampler: &SceneSampler,
        negatives: NegativeSampling,
        rng: &mut Rng,
    ) -> Plan {
        match family {
            Family::Describe => Plan::Describe,
            Family::Color => Plan::Color,
            Family::Count => {
                if rng.chance(0.5) {
                    Plan::Count(None)
                } else {
                    Plan::Count(Some(draw_attribute_count(sampler, rng)))
                }
            }
            Family::Position => Plan::Position,
            Family::Existence => Plan::Existence {
                present: rng.chance(0.5),
                mode: match negatives {
                    NegativeSampling::Pope => Some(PopeMode::ALL[rng.index(PopeMode::ALL.len())]),
                    NegativeSampling::Matched => None,
                },
            },
            Family::Relation => Plan::Relation {
                relation: Relation::ALL[rng.index(Relation::ALL.len())],
            },
            Family::Ocr => Plan::Ocr,
        }
    }

    pub fn requirements(&self) -> SceneRequirements {
        SceneRequirements {
            min_objects: if matches!(self, Plan::Relation { .. }) {
                2
            } else {
                1
            },
            force_glyph: matches!(self, Plan::Ocr),
        }
    }

    /// The question and answer for `scene`, or `None` if this scene cannot carry out
    /// the plan (the caller then draws another scene).
    pub fn ask(&self, scene: &Scene, sampler: &SceneSampler, rng: &mut Rng) -> Option<Asked> {
        let asked = |question: String, answer: String, mask: MaskTarget| Asked {
            question,
            answer,
            pope: None,
            mask,
            options: Vec::new(),
        };
        match *self {
            Plan::Describe => Some(asked(
                text::DESCRIBE.to_owned(),
                describe(scene),
                MaskTarget::None,
            )),
            Plan::Color => {
                let unique: Vec<usize> = (0..scene.objects.len())
                    .filter(|&i| scene.count_shape(scene.objects[i].shape) == 1)
                    .collect();
                let &index = rng.choose(&unique)?;
                let object = scene.objects[index];
                Some(asked(
                    text::color_question(object.shape),
                    object.color.name().to_owned(),
                    MaskTarget::Objects(vec![index]),
                ))
            }
            Plan::Count(target) => {
                let subject = match target {
                    None => CountSubject::Objects,
                    Some(count) => {
                        let candidates = attribute_subjects(sampler)
                            .filter(|&s| counted(scene, s).len() == count)
                            .collect::<Vec<_>>();
                        *rng.choose(&candidates)?
                    }
                };
                let objects = counted(scene, subject);
                let answer = objects.len().to_string();
                let mask = if objects.is_empty() {
                    MaskTarget::None
                } else {
                    MaskTarget::Objects(objects)
                };
                Some(asked(text::count_question(subject), answer, mask))
            }
            Plan::Position => {
                let index = rng.index(scene.objects.len());
                let object = scene.objects[index];
                Some(asked(
                    text::position_question(object.color, object.shape),
                    scene.quadrant(object.cell).name().to_owned(),
                    MaskTarget::Objects(vec![index]),
                ))
            }
            Plan::Existence { present, mode } => {
                let (pair, mask) = if present {
                    let index = rng.index(scene.objects.len());
                    let object = scene.objects[index];
                    (
                        (object.color, object.shape),
                        MaskTarget::Objects(vec![index]),
                    )
                } else {
                    (pope_negative(scene, sampler, mode, rng)?, MaskTarget::None)
                };
                let answer = if present { text::YES } else { text::NO };
                Some(Asked {
                    question: text::existence_question(pair.0, pair.1),
                    answer: answer.to_owned(),
                    pope: mode,
                    mask,
                    options: vec![text::YES.to_owned(), text::NO.to_owned()],
                })
            }
            Plan::Relation { relation } => {
                let n = scene.objects.len();
                let pairs: Vec<(usize, usize)> = (0..n)
                    .flat_map(|a| (0..n).map(move |b| (a, b)))
                    .filter(|&(a, b)| a != b)
                    .filter(|&(a, b)| relation.holds(scene.objects[a].cell, scene.objects[b].cell))
                    .collect();
                let &(a, b) = rng.choose(&pairs)?;
                let (first, second) = (scene.objects[a], scene.objects[b]);
                Some(Asked {
                    options: relation
                        .options()
                        .iter()
                        .map(|r| r.answer().to_owned())
                        .collect(),
                    ..asked(
                        text::relation_question(
                            (first.color, first.shape),
                            relation,
                            (second.color, second.shape),
                        ),
                        relation.answer().to_owned(),
                        MaskTarget::Objects(vec![a, b]),
                    )
                })
            }
            Plan::Ocr => {
                let glyph = scene.glyph?;
                Some(asked(
                    text::OCR.to_owned(),
                    text::letter_answer(glyph.letter),
                    MaskTarget::Glyph,
                ))
            }
        }
    }
}

/// Dense description: count first, then objects in raster order, the glyph last.
pub(crate) fn describe(scene: &Scene) -> String {
    let mut sentences = vec![text::count_sentence(scene.objects.len())];
    for object in &scene.objects {
        sentences.push(text::object_sentence(
            object.color,
            object.shape,
            object.cell,
        ));
    }
    if let Some(glyph) = scene.glyph {
        sentences.push(text::glyph_sentence(glyph.letter, glyph.cell));
    }
    sentences.join(" ")
}

/// Colours and shapes that occur in the world (positive prior weight).
fn attribute_subjects(sampler: &SceneSampler) -> impl Iterator<Item = CountSubject> + '_ {
    let shapes = Shape::ALL
        .into_iter()
        .filter(|&s| sampler.shape_weights[s as usize] > 0.0)
        .map(CountSubject::Shape);
    let colors = Color::ALL
        .into_iter()
        .filter(|&c| sampler.color_weights[c as usize] > 0.0)
        .map(CountSubject::Color);
    shapes.chain(colors)
}

fn counted(scene: &Scene, subject: CountSubject) -> Vec<usize> {
    (0..scene.objects.len())
        .filter(|&i| {
            let object = scene.objects[i];
            match subject {
                CountSubject::Objects => true,
                CountSubject::Shape(shape) => object.shape == shape,
                CountSubject::Color(color) => object.color == color,
            }
        })
        .collect()
}

/// Target answer for an attribute count question. Total-count questions (the other
/// half) answer 1..=M uniformly, so attribute questions put extra mass on 0 to make
/// the overall answer distribution uniform over 0..=M:
/// P(0) = 2/(M+1) and P(k) = 2/(M+1) - 1/M for k ≥ 1, restricted to counts the world
/// can produce.
fn draw_attribute_count(sampler: &SceneSampler, rng: &mut Rng) -> usize {
    let m = sampler.max_objects as usize;
    let colors = sampler.color_weights.iter().filter(|&&w| w > 0.0).count();
    let shapes = sampler.shape_weights.iter().filter(|&&w| w > 0.0).count();
    // A shape occurs at most once per colour and a colour at most once per shape.
    let largest = m.min(colors.max(shapes));
    // Zero needs an attribute that can be absent: some other colour or shape exists.
    let zero_possible = colors + shapes > 2;
    let weights: Vec<f64> = (0..=largest)
        .map(|k| match k {
            0 if zero_possible => 2.0 / (m + 1) as f64,
            0 => 0.0,
            _ => 2.0 / (m + 1) as f64 - 1.0 / m as f64,
        })
        .collect();
    // For M = 1 every attribute weight can be zero; fall back to total-count answers.
    rng.weighted(&weights).unwrap_or(1)
}

/// A (colour, shape) pair absent from `scene`, chosen by POPE's `mode`, or with the
/// pair's prior frequency when `mode` is `None` (frequency-matched negatives).
fn pope_negative(
    scene: &Scene,
    sampler: &SceneSampler,
    mode: Option<PopeMode>,
    rng: &mut Rng,
) -> Option<(Color, Shape)> {
    let absent: Vec<(Color, Shape)> = Color::ALL
        .iter()
        .flat_map(|&c| Shape::ALL.iter().map(move |&s| (c, s)))
        .filter(|&(c, s)| scene.find(c, s).is_none())
        .collect();
    let prior = |&(c, s): &(Color, Shape)| sampler.pair_weight(c, s);
    let Some(mode) = mode else {
        let weights: Vec<f64> = absent.iter().map(prior).collect();
        return rng.weighted(&weights).map(|i| absent[i]);
    };
    match mode {
        PopeMode::Random => rng.choose(&absent).copied(),
        PopeMode::Popular => choose_best(&absent, |pair| (0, prior(pair)), rng),
        PopeMode::Adversarial => {
            // Binding errors are the hardest negatives: a red circle when a red square
            // and a blue circle are present. Score = present objects sharing the colour
            // plus present objects sharing the shape; ties go to the more frequent pair.
            let overlap = |&(c, s): &(Color, Shape)| scene.count_color(c) + scene.count_shape(s);
            let sharing: Vec<(Color, Shape)> =
                absent.iter().copied().filter(|p| overlap(p) > 0).collect();
            choose_best(&sharing, |pair| (overlap(pair), prior(pair)), rng)
        }
    }
}

/// The candidate with the highest (score, weight), ties broken uniformly.
fn choose_best<T: Copy>(
    candidates: &[T],
    key: impl Fn(&T) -> (usize, f64),
    rng: &mut Rng,
) -> Option<T> {
    let best =
        candidates
            .iter()
            .map(&key)
            .fold(None, |best: Option<(usize, f64)>, k| match best {
                Some(b) if (b.0, b.1) >= (k.0, k.1) => Some(b),
                _ => Some(k),
            })?;
    let tied: Vec<T> = candidates
        .iter()
        .copied()
        .filter(|c| {
            let k = key(c);
            k.0 == best.0 && (k.1 - best.1).abs() <= 1e-12 * best.1.abs().max(1.0)
        })
        .collect();
    rng.choose(&tied).copied()
}

#[cfg(test)]
mod tests {
    use super::super::scene::{SceneGlyph, SceneObject};
    use super::*;

    fn sampler() -> SceneSampler {
        SceneSampler {
            grid: 4,
            cell_size: 8,
            min_object_size: 5,
            max_objects: 4,
            glyph_prob: 0.3,
            letters: vec!['A', 'K'],
            color_weights: vec![3.0, 2.0, 2.0, 1.5, 1.0, 1.0],
            shape_weights: vec![2.0, 1.5, 1.0],
        }
    }

    fn object(row: u32, col: u32, color: Color, shape: Shape) -> SceneObject {
        SceneObject {
            cell: Cell { row, col },
            color,
            shape,
            x: col * 8,
            y: row * 8,
            size: 8,
        }
    }

    fn scene(objects: Vec<SceneObject>, glyph: Option<(u32, u32, char)>) -> Scene {
        Scene {
            grid: 4,
            cell_size: 8,
            objects,
            glyph: glyph.map(|(row, col, letter)| SceneGlyph {
                cell: Cell { row, col },
                letter,
                x: col * 8,
                y: row * 8,
            }),
        }
    }

    #[test]
    fn describe_lists_count_objects_in_raster_order_then_glyph() {
        let s = scene(
            vec![
                object(0, 0, Color::Red, Shape::Circle),
                object(0, 3, Color::Green, Shape::Triangle),
                object(3, 3, Color::Blue, Shape::Square),
            ],
            Some((2, 1, 'K')),
        );
        assert_eq!(
            describe(&s),
            "There are 3 objects. A red circle in row 1, column 1. A green triangle in row 1, column 4. \
             A blue square in row 4, column 4. The letter K is in row 3, column 2."
        );
        let single = scene(vec![object(1, 2, Color::Orange, Shape::Square)], None);
        assert_eq!(
            describe(&single),
            "There is 1 object. An orange square in row 2, column 3."
        );
    }

    #[test]
    fn templates_read_naturally() {
        assert_eq!(
            text::color_question(Shape::Circle),
            "What color is the circle?"
        );
        assert_eq!(
            text::count_question(CountSubject::Shape(Shape::Circle)),
            "How many circles are there?"
        );
        assert_eq!(
            text::count_question(CountSubject::Color(Color::Red)),
            "How many red objects are there?"
        );
        assert_eq!(
            text::count_question(CountSubject::Objects),
            "How many objects are there?"
        );
        assert_eq!(
            text::position_question(Color::Red, Shape::Circle),
            "Where is the red circle?"
        );
        assert_eq!(
            text::existence_question(Color::Blue, Shape::Square),
            "Is there a blue square in the image?"
        );
        assert_eq!(
            text::existence_question(Color::Orange, Shape::Circle),
            "Is there an orange circle in the image?"
        );
        assert_eq!(
            text::relation_question(
                (Color::Red, Shape::Circle),
                Relation::RightOf,
                (Color::Blue, Shape::Square)
            ),
            "Is the red circle to the left or to the right of the blue square?"
        );
        assert_eq!(
            text::relation_question(
                (Color::Red, Shape::Circle),
                Relation::Below,
                (Color::Blue, Shape::Square)
            ),
            "Is the red circle above or below the blue square?"
        );
        assert_eq!(text::letter_answer('K'), "k");
    }

    #[test]
    fn relations_compare_cells_strictly() {
        let a = Cell { row: 1, col: 1 };
        let b = Cell { row: 1, col: 3 };
        assert!(Relation::LeftOf.holds(a, b) && Relation::RightOf.holds(b, a));
        assert!(
            !Relation::Above.holds(a, b) && !Relation::Below.holds(a, b),
            "same row"
        );
        let c = Cell { row: 3, col: 1 };
        assert!(Relation::Above.holds(a, c) && Relation::Below.holds(c, a));
    }

    #[test]
    fn color_question_needs_a_unique_shape() {
        let mut rng = Rng::new(1);
        let ambiguous = scene(
            vec![
                object(0, 0, Color::Red, Shape::Circle),
                object(0, 1, Color::Blue, Shape::Circle),
            ],
            None,
        );
        assert_eq!(Plan::Color.ask(&ambiguous, &sampler(), &mut rng), None);
        let mut with_unique = ambiguous.clone();
        with_unique
            .objects
            .push(object(1, 1, Color::Green, Shape::Square));
        let asked = Plan::Color.ask(&with_unique, &sampler(), &mut rng).unwrap();
        assert_eq!(asked.question, "What color is the square?");
        assert_eq!(asked.answer, "green");
        assert_eq!(asked.mask, MaskTarget::Objects(vec![2]));
    }

    #[test]
    fn popular_negative_is_the_most_frequent_absent_pair() {
        let mut rng = Rng::new(2);
        let s = scene(vec![object(0, 0, Color::Red, Shape::Circle)], None);
        // Red circle is present, so the next most frequent pair is red square (3 × 1.5).
        for _ in 0..20 {
            assert_eq!(
                pope_negative(&s, &sampler(), Some(PopeMode::Popular), &mut rng),
                Some((Color::Red, Shape::Square))
            );
        }
        let empty_world = scene(vec![object(0, 0, Color::Blue, Shape::Triangle)], None);
        assert_eq!(
            pope_negative(&empty_world, &sampler(), Some(PopeMode::Popular), &mut rng),
            Some((Color::Red, Shape::Circle))
        );
    }

    #[test]
    fn adversarial_negative_prefers_attribute_binding_confusions() {
        let mut rng = Rng::new(3);
        let s = scene(
            vec![
                object(0, 0, Color::Red, Shape::Square),
                object(0, 1, Color::Blue, Shape::Circle),
            ],
            None,
        );
        // Red circle and blue square each share an attribute with both objects.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let pair =
                pope_negative(&s, &sampler(), Some(PopeMode::Adversarial), &mut rng).unwrap();
            assert!(s.find(pair.0, pair.1).is_none());
            seen.insert(pair);
        }
        // Both score 2; red circle has the higher prior (3 × 2 vs 2 × 1.5).
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            vec![(Color::Red, Shape::Circle)]
        );
    }

    #[test]
    fn random_negatives_are_absent_and_varied() {
        let mut rng = Rng::new(4);
        let s = scene(vec![object(0, 0, Color::Red, Shape::Circle)], None);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..500 {
            let pair = pope_negative(&s, &sampler(), Some(PopeMode::Random), &mut rng).unwrap();
            assert_ne!(pair, (Color::Red, Shape::Circle));
            seen.insert(pair);
        }
        assert_eq!(seen.len(), 17);
    }

    #[test]
    fn attribute_count_targets_make_answers_uniform_overall() {
        let mut rng = Rng::new(5);
        let sampler = sampler();
        let n = 100_000;
        let mut counts = [0usize; 5];
        for _ in 0..n {
            counts[draw_attribute_count(&sampler, &mut rng)] += 1;
        }
        let p: Vec<f64> = counts.iter().map(|&c| c as f64 / n as f64).collect();
        assert!((p[0] - 0.4).abs() < 0.01, "{p:?}");
        for &pk in &p[1..] {
            assert!((pk - 0.15).abs() < 0.01, "{p:?}");
        }
    }

    #[test]
    fn relation_plan_answers_match_the_geometry() {
        let mut rng = Rng::new(6);
        let s = scene(
            vec![
                object(0, 0, Color::Red, Shape::Circle),
                object(2, 3, Color::Blue, Shape::Square),
            ],
            None,
        );
        for relation in Relation::ALL {
            let asked = Plan::Relation { relation }
                .ask(&s, &sampler(), &mut rng)
                .unwrap();
            assert_eq!(asked.answer, relation.answer());
            assert_eq!(asked.options.len(), 2);
            assert!(asked.options.contains(&asked.answer));
            // The red circle is up and left of the blue square: it is asked first
            // for "left"/"above" and second for "right"/"below".
            let red_first = asked.question.starts_with("Is the red");
            assert_eq!(
                red_first,
                matches!(relation, Relation::LeftOf | Relation::Above)
            );
            assert_eq!(
                asked.mask,
                MaskTarget::Objects(if red_first { vec![0, 1] } else { vec![1, 0] })
            );
        }
        // Same column: no left/right answer exists.
        let column = scene(
            vec![
                object(0, 2, Color::Red, Shape::Circle),
                object(3, 2, Color::Blue, Shape::Square),
            ],
            None,
        );
        let plan = Plan::Relation {
            relation: Relation::LeftOf,
        };
        assert_eq!(plan.ask(&column, &sampler(), &mut rng), None);
    }

    #[test]
    fn ocr_needs_a_glyph() {
        let mut rng = Rng::new(7);
        let without = scene(vec![object(0, 0, Color::Red, Shape::Circle)], None);
        assert_eq!(Plan::Ocr.ask(&without, &sampler(), &mut rng), None);
        let with = scene(
            vec![object(0, 0, Color::Red, Shape::Circle)],
            Some((1, 1, 'K')),
        );
        let asked = Plan::Ocr.ask(&with, &sampler(), &mut rng).unwrap();
        assert_eq!(
            (asked.question.as_str(), asked.answer.as_str()),
            (text::OCR, "k")
        );
        assert_eq!(asked.mask, MaskTarget::Glyph);
    }
}
