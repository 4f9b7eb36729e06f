//! The semantic content of a shapes image: which objects sit in which cells.

use serde::{Deserialize, Serialize};

use super::Split;
use vlmkit_core::rng::{hash_words, Rng};

/// Object colours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
}

impl Color {
    pub const ALL: [Color; 6] = [
        Color::Red,
        Color::Green,
        Color::Blue,
        Color::Yellow,
        Color::Purple,
        Color::Orange,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Yellow => "yellow",
            Color::Purple => "purple",
            Color::Orange => "orange",
        }
    }

    /// Nominal 8-bit RGB; far enough apart that per-object and per-pixel jitter never
    /// makes two colours overlap.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [210, 45, 45],
            Color::Green => [50, 180, 70],
            Color::Blue => [45, 90, 225],
            Color::Yellow => [225, 210, 50],
            Color::Purple => [150, 65, 200],
            Color::Orange => [240, 135, 30],
        }
    }
}

/// Object shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
        }
    }
}

/// A grid cell; ordering is raster order (row-major).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cell {
    pub row: u32,
    pub col: u32,
}

/// The image quadrant a cell lies in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quadrant {
    TopLeft,
    TopRight,
    BottomLeft,
    BottomRight,
}

impl Quadrant {
    pub const ALL: [Quadrant; 4] = [
        Quadrant::TopLeft,
        Quadrant::TopRight,
        Quadrant::BottomLeft,
        Quadrant::BottomRight,
    ];

    /// Natural-language name, e.g. "top left".
    pub fn name(self) -> &'static str {
        match self {
            Quadrant::TopLeft => "top left",
            Quadrant::TopRight => "top right",
            Quadrant::BottomLeft => "bottom left",
            Quadrant::BottomRight => "bottom right",
        }
    }

    /// The quadrant of `cell` in a `grid`×`grid` layout (`grid` is even).
    pub fn of(cell: Cell, grid: u32) -> Quadrant {
        let half = grid / 2;
        match (cell.row < half, cell.col < half) {
            (true, true) => Quadrant::TopLeft,
            (true, false) => Quadrant::TopRight,
            (false, true) => Quadrant::BottomLeft,
            (false, false) => Quadrant::BottomRight,
        }
    }
}

/// One coloured shape and where it was drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SceneObject {
    pub cell: Cell,
    pub color: Color,
    pub shape: Shape,
    /// Top-left pixel of the shape's bounding square.
    pub x: u32,
    pub y: u32,
    /// Side of the bounding square in pixels.
    pub size: u32,
}

/// A white letter drawn with the 5×7 font.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SceneGlyph {
    pub cell: Cell,
    pub letter: char,
    /// Top-left pixel of the 5×7 bitmap.
    pub x: u32,
    pub y: u32,
}

/// Everything in one image. Objects are kept in raster order of their cells.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub grid: u32,
    pub cell_size: u32,
    pub objects: Vec<SceneObject>,
    pub glyph: Option<SceneGlyph>,
}

/// The canonical identity of a scene: what is where, ignoring pixel-level details
/// (sizes, offsets, noise). Train and eval never share a key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SceneKey {
    /// Sorted by cell.
    pub objects: Vec<(Cell, Color, Shape)>,
    pub glyph: Option<(Cell, char)>,
}

/// Separates the split-assignment hash from every other use of `hash_words`.
const SPLIT_DOMAIN: u64 = 0x5CE7_E5B1_17A5_516E;

impl SceneKey {
    /// A stable 64-bit hash of the key. It deliberately ignores the dataset seed, so the
    /// train/eval partition of scenes is the same for every seed.
    pub fn stable_hash(&self) -> u64 {
        let mut words = vec![SPLIT_DOMAIN, self.objects.len() as u64];
        for &(cell, color, shape) in &self.objects {
            words.push(
                (cell.row as u64) << 32
                    | (cell.col as u64) << 16
                    | (color as u64) << 8
                    | shape as u64,
            );
        }
        if let Some((cell, letter)) = self.glyph {
            words.push(1 << 63 | (cell.row as u64) << 40 | (cell.col as u64) << 24 | letter as u64);
        }
        hash_words(&words)
    }

    /// The split this scene belongs to.
    pub fn split(&self, eval_modulus: u64) -> Split {
        if self.stable_hash().is_multiple_of(eval_modulus) {
            Split::Eval
        } else {
            Split::Train
        }
    }
}

impl Scene {
    pub fn key(&self) -> SceneKey {
        let mut objects: Vec<_> = self
            .objects
            .iter()
            .map(|o| (o.cell, o.color, o.shape))
            .collect();
        objects.sort();
        SceneKey {
            objects,
            glyph: self.glyph.map(|g| (g.cell, g.letter)),
        }
    }

    pub fn quadrant(&self, cell: Cell) -> Quadrant {
        Quadrant::of(cell, self.grid)
    }

    /// The object with this colour and shape (pairs are unique within a scene).
    pub fn find(&self, color: Color, shape: Shape) -> Option<usize> {
        self.objects
            .iter()
            .position(|o| o.color == color && o.shape == shape)
    }

    pub fn count_shape(&self, shape: Shape) -> usize {
        self.objects.iter().filter(|o| o.shape == shape).count()
    }

    pub fn count_color(&self, color: Color) -> usize {
        self.objects.iter().filter(|o| o.color == color).count()
    }
}

/// What a question family needs from a scene.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SceneRequirements {
    pub min_objects: u32,
    pub force_glyph: bool,
}

/// Parameters for drawing scenes, resolved from the config.
#[derive(Clone, Debug)]
pub(crate) struct SceneSampler {
    pub grid: u32,
    pub cell_size: u32,
    /// Smallest object side in pixels (objects span `min_object_size..=cell_size`).
    pub min_object_size: u32,
    pub max_objects: u32,
    pub glyph_prob: f64,
    pub letters: Vec<char>,
    pub color_weights: Vec<f64>,
    pub shape_weights: Vec<f64>,
}

impl SceneSampler {
    /// Prior weight of a (colour, shape) pair: how often it appears in scenes.
    pub fn pair_weight(&self, color: Color, shape: Shape) -> f64 {
        self.color_weights[color as usize] * self.shape_weights[shape as usize]
    }

    /// Draws a scene: object count, cells, (colour, shape) pairs without replacement
    /// by prior weight, an optional glyph in a free cell, and each object's size and
    /// offset inside its cell.
    pub fn sample(&self, rng: &mut Rng, requirements: SceneRequirements) -> Scene {
        let min_objects = requirements.min_objects.clamp(1, self.max_objects);
        let count = rng.range_inclusive(min_objects as i64, self.max_objects as i64) as usize;
        let mut cells: Vec<Cell> = (0..self.grid)
            .flat_map(|row| (0..self.grid).map(move |col| Cell { row, col }))
            .collect();
        rng.shuffle(&mut cells);

        let pairs: Vec<(Color, Shape)> = Color::ALL
            .iter()
            .flat_map(|&c| Shape::ALL.iter().map(move |&s| (c, s)))
            .collect();
        let mut weights: Vec<f64> = pairs.iter().map(|&(c, s)| self.pair_weight(c, s)).collect();
        let min_size = self.min_object_size.clamp(1, self.cell_size);
        let mut objects = Vec::with_capacity(count);
        for &cell in &cells[..count] {
            let pick = rng
                .weighted(&weights)
                .expect("validated: enough pairs with positive weight");
            weights[pick] = 0.0;
            let (color, shape) = pairs[pick];
            let size = rng.range_inclusive(min_size as i64, self.cell_size as i64) as u32;
            let slack = (self.cell_size - size) as i64;
            let x = cell.col * self.cell_size + rng.range_inclusive(0, slack) as u32;
            let y = cell.row * self.cell_size + rng.range_inclusive(0, slack) as u32;
            objects.push(SceneObject {
                cell,
                color,
                shape,
                x,
                y,
                size,
            });
        }
        objects.sort_by_key(|o| o.cell);

        let has_glyph = requirements.force_glyph || rng.chance(self.glyph_prob);
        let glyph = (has_glyph && !self.letters.is_empty()).then(|| {
            let cell = cells[count];
            let letter = *rng.choose(&self.letters).expect("non-empty");
            let slack_x = (self.cell_size - vlmkit_plot::font::GLYPH_WIDTH) as i64;
            let slack_y = (self.cell_size - vlmkit_plot::font::GLYPH_HEIGHT) as i64;
            SceneGlyph {
                cell,
                letter,
                x: cell.col * self.cell_size + rng.range_inclusive(0, slack_x) as u32,
                y: cell.row * self.cell_size + rng.range_inclusive(0, slack_y) as u32,
            }
        });
        Scene {
            grid: self.grid,
            cell_size: self.cell_size,
            objects,
            glyph,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler() -> SceneSampler {
        SceneSampler {
            grid: 4,
            cell_size: 8,
            min_object_size: 5,
            max_objects: 4,
            glyph_prob: 0.5,
            letters: vec!['A', 'B'],
            color_weights: vec![3.0, 2.0, 2.0, 1.5, 1.0, 1.0],
            shape_weights: vec![2.0, 1.5, 1.0],
        }
    }

    const ANY: SceneRequirements = SceneRequirements {
        min_objects: 1,
        force_glyph: false,
    };

    #[test]
    fn quadrants_split_the_grid_in_half() {
        assert_eq!(Quadrant::of(Cell { row: 0, col: 0 }, 4), Quadrant::TopLeft);
        assert_eq!(Quadrant::of(Cell { row: 1, col: 2 }, 4), Quadrant::TopRight);
        assert_eq!(
            Quadrant::of(Cell { row: 2, col: 1 }, 4),
            Quadrant::BottomLeft
        );
        assert_eq!(
            Quadrant::of(Cell { row: 3, col: 3 }, 4),
            Quadrant::BottomRight
        );
    }

    #[test]
    fn scenes_respect_the_world_rules() {
        let sampler = sampler();
        let mut rng = Rng::new(11);
        for _ in 0..2_000 {
            let scene = sampler.sample(&mut rng, ANY);
            assert!((1..=4).contains(&scene.objects.len()));
            let mut cells: Vec<Cell> = scene.objects.iter().map(|o| o.cell).collect();
            assert!(
                cells.windows(2).all(|w| w[0] < w[1]),
                "raster order, distinct cells"
            );
            if let Some(glyph) = scene.glyph {
                assert!(!cells.contains(&glyph.cell), "glyph has its own cell");
                assert!(
                    glyph.x + 5 <= (glyph.cell.col + 1) * 8
                        && glyph.y + 7 <= (glyph.cell.row + 1) * 8
                );
                cells.push(glyph.cell);
            }
            let mut pairs: Vec<_> = scene.objects.iter().map(|o| (o.color, o.shape)).collect();
            pairs.sort();
            pairs.dedup();
            assert_eq!(
                pairs.len(),
                scene.objects.len(),
                "(colour, shape) pairs are unique"
            );
            for object in &scene.objects {
                assert!((5..=8).contains(&object.size));
                assert!(
                    object.x >= object.cell.col * 8
                        && object.x + object.size <= (object.cell.col + 1) * 8
                );
                assert!(
                    object.y >= object.cell.row * 8
                        && object.y + object.size <= (object.cell.row + 1) * 8
                );
            }
        }
    }

    #[test]
    fn requirements_are_honoured() {
        let sampler = sampler();
        let mut rng = Rng::new(12);
        for _ in 0..500 {
            let scene = sampler.sample(
                &mut rng,
                SceneRequirements {
                    min_objects: 2,
                    force_glyph: true,
                },
            );
            assert!(scene.objects.len() >= 2);
            assert!(scene.glyph.is_some());
        }
    }

    #[test]
    fn frequent_colours_and_shapes_appear_more_often() {
        let sampler = sampler();
        let mut rng = Rng::new(13);
        let (mut red, mut orange, mut circle, mut triangle) = (0, 0, 0, 0);
        for _ in 0..3_000 {
            let scene = sampler.sample(&mut rng, ANY);
            red += scene.count_color(Color::Red);
            orange += scene.count_color(Color::Orange);
            circle += scene.count_shape(Shape::Circle);
            triangle += scene.count_shape(Shape::Triangle);
        }
        assert!(
            red as f64 > 2.0 * orange as f64,
            "red {red} vs orange {orange}"
        );
        assert!(
            circle as f64 > 1.4 * triangle as f64,
            "circle {circle} vs triangle {triangle}"
        );
    }

    #[test]
    fn key_ignores_pixel_details_and_split_is_stable() {
        let sampler = sampler();
        let mut rng = Rng::new(14);
        let scene = sampler.sample(&mut rng, ANY);
        let mut moved = scene.clone();
        for object in &mut moved.objects {
            object.size = 5;
            object.x = object.cell.col * 8;
        }
        assert_eq!(scene.key(), moved.key());
        assert_eq!(scene.key().stable_hash(), moved.key().stable_hash());
        let mut recoloured = scene.clone();
        recoloured.objects[0].color = if scene.objects[0].color == Color::Red {
            Color::Blue
        } else {
            Color::Red
        };
        if scene
            .find(recoloured.objects[0].color, recoloured.objects[0].shape)
            .is_none()
        {
            assert_ne!(scene.key().stable_hash(), recoloured.key().stable_hash());
        }

        // Roughly 1 / eval_modulus of the scenes fall into eval.
        let eval = (0..4_000)
            .filter(|_| sampler.sample(&mut rng, ANY).key().split(8) == Split::Eval)
            .count();
        assert!((380..620).contains(&eval), "{eval}");
    }
}
