//! Drawing a scene into pixels, with the masks of everything drawn.

use image::{GrayImage, Luma, Rgb, RgbImage};
use vlmkit_plot::font;

use super::scene::{Scene, Shape};
use crate::mask::INSIDE;
use vlmkit_core::rng::Rng;

/// Mean background grey and how far it varies per image: dark, so every colour and
/// the white glyph stand out.
const BACKGROUND_LEVEL: i64 = 38;
const BACKGROUND_SPREAD: i64 = 8;
/// Per-object shift of each colour channel, so the model must learn colour
/// categories rather than exact RGB values.
const OBJECT_COLOR_SPREAD: i64 = 16;
const GLYPH_LEVEL: i64 = 235;
const GLYPH_SPREAD: i64 = 15;

/// A rendered scene.
pub(crate) struct Rendered {
    pub image: RgbImage,
    /// One mask per scene object (same order), exactly the pixels drawn for it.
    pub object_masks: Vec<GrayImage>,
    /// The glyph's whole cell.
    pub glyph_mask: Option<GrayImage>,
}

/// Whether pixel (`dx`, `dy`) of a `size`-pixel bounding square belongs to the shape,
/// judged at the pixel centre.
pub fn shape_covers(shape: Shape, size: u32, dx: u32, dy: u32) -> bool {
    if dx >= size || dy >= size {
        return false;
    }
    let half = size as f64 / 2.0;
    let (px, py) = (dx as f64 + 0.5, dy as f64 + 0.5);
    match shape {
        Shape::Square => true,
        Shape::Circle => (px - half).powi(2) + (py - half).powi(2) <= half * half,
        // Upward isosceles triangle: apex at the top centre, base along the bottom.
        Shape::Triangle => (px - half).abs() <= half * py / size as f64,
    }
}

fn noisy(rng: &mut Rng, value: i64, noise: f64) -> u8 {
    let jitter = ((rng.uniform() * 2.0 - 1.0) * noise).round() as i64;
    (value + jitter).clamp(0, 255) as u8
}

pub(crate) fn render(scene: &Scene, noise: f64, rng: &mut Rng) -> Rendered {
    let side = scene.grid * scene.cell_size;
    let background = BACKGROUND_LEVEL + rng.range_inclusive(-BACKGROUND_SPREAD, BACKGROUND_SPREAD);
    let mut image = RgbImage::new(side, side);
    for pixel in image.pixels_mut() {
        *pixel = Rgb([0, 1, 2].map(|_| noisy(rng, background, noise)));
    }

    let mut object_masks = Vec::with_capacity(scene.objects.len());
    for object in &scene.objects {
        let nominal = object.color.rgb();
        let tint: [i64; 3] = [0, 1, 2].map(|channel| {
            nominal[channel] as i64 + rng.range_inclusive(-OBJECT_COLOR_SPREAD, OBJECT_COLOR_SPREAD)
        });
        let mut mask = GrayImage::new(side, side);
        for dy in 0..object.size {
            for dx in 0..object.size {
                if shape_covers(object.shape, object.size, dx, dy) {
                    let (x, y) = (object.x + dx, object.y + dy);
                    image.put_pixel(x, y, Rgb(tint.map(|level| noisy(rng, level, noise))));
                    mask.put_pixel(x, y, Luma([INSIDE]));
                }
            }
        }
        object_masks.push(mask);
    }

    let glyph_mask = scene.glyph.map(|glyph| {
        let rows = font::glyph(glyph.letter).expect("validated: glyph letters are A-Z");
        let level = GLYPH_LEVEL + rng.range_inclusive(-GLYPH_SPREAD, GLYPH_SPREAD);
        for row in 0..font::GLYPH_HEIGHT {
            for col in 0..font::GLYPH_WIDTH {
                if font::glyph_pixel(&rows, col, row) {
                    let pixel = Rgb([0, 1, 2].map(|_| noisy(rng, level, noise)));
                    image.put_pixel(glyph.x + col, glyph.y + row, pixel);
                }
            }
        }
        let mut mask = GrayImage::new(side, side);
        let (x0, y0) = (
            glyph.cell.col * scene.cell_size,
            glyph.cell.row * scene.cell_size,
        );
        for y in y0..y0 + scene.cell_size {
            for x in x0..x0 + scene.cell_size {
                mask.put_pixel(x, y, Luma([INSIDE]));
            }
        }
        mask
    });

    Rendered {
        image,
        object_masks,
        glyph_mask,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(shape: Shape, size: u32) -> Vec<Vec<bool>> {
        (0..size)
            .map(|dy| {
                (0..size)
                    .map(|dx| shape_covers(shape, size, dx, dy))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn shapes_at_every_size_are_distinct_and_plausible() {
        for size in 5..=8 {
            let area = |shape| {
                covered(shape, size)
                    .iter()
                    .flatten()
                    .filter(|&&c| c)
                    .count()
            };
            let (square, circle, triangle) = (
                area(Shape::Square),
                area(Shape::Circle),
                area(Shape::Triangle),
            );
            assert_eq!(square as u32, size * size);
            assert!(
                circle < square && circle as f64 > 0.65 * square as f64,
                "size {size}: circle {circle}"
            );
            assert!(
                triangle < circle && triangle as f64 > 0.35 * square as f64,
                "size {size}: triangle {triangle}"
            );
            // Circles lose their corners; triangles are widest at the bottom.
            let circle_rows = covered(Shape::Circle, size);
            assert!(!circle_rows[0][0] && circle_rows[0][(size / 2) as usize]);
            let triangle_rows = covered(Shape::Triangle, size);
            let widths: Vec<usize> = triangle_rows
                .iter()
                .map(|r| r.iter().filter(|&&c| c).count())
                .collect();
            assert!(widths.windows(2).all(|w| w[0] <= w[1]), "{widths:?}");
            assert_eq!(*widths.last().unwrap() as u32, size);
        }
        assert!(!shape_covers(Shape::Square, 5, 5, 0));
    }
}
