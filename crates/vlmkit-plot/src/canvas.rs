//! An RGB raster canvas with the primitives the plots need.
//!
//! Coordinates are signed so callers can draw partly off-canvas; every primitive clips.

use std::path::Path;

use image::RgbImage;

use crate::color::Color;
use crate::error::PlotError;
use crate::font;

/// A row-major RGB pixel buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canvas {
    pub width: u32,
    pub height: u32,
    /// `width * height` pixels, row by row from the top-left corner.
    pub pixels: Vec<Color>,
}

impl Canvas {
    /// A canvas filled with `background`.
    pub fn new(width: u32, height: u32, background: Color) -> Self {
        Canvas {
            width,
            height,
            pixels: vec![background; width as usize * height as usize],
        }
    }

    /// A canvas holding a copy of `image`.
    pub fn from_rgb_image(image: &RgbImage) -> Self {
        Canvas {
            width: image.width(),
            height: image.height(),
            pixels: image.pixels().map(|p| Color::from(p.0)).collect(),
        }
    }

    fn index(&self, x: i32, y: i32) -> Option<usize> {
        if x < 0 || y < 0 || x as u32 >= self.width || y as u32 >= self.height {
            return None;
        }
        Some(y as usize * self.width as usize + x as usize)
    }

    /// The colour at (`x`, `y`), or `None` outside the canvas.
    pub fn pixel(&self, x: u32, y: u32) -> Option<Color> {
        let x = i32::try_from(x).ok()?;
        let y = i32::try_from(y).ok()?;
        self.index(x, y).map(|i| self.pixels[i])
    }

    /// Sets one pixel; outside the canvas this does nothing.
    pub fn set_pixel(&mut self, x: i32, y: i32, color: Color) {
        if let Some(i) = self.index(x, y) {
            self.pixels[i] = color;
        }
    }

    /// Blends `color` over one pixel with opacity `alpha` in `[0, 1]`.
    pub fn blend_pixel(&mut self, x: i32, y: i32, color: Color, alpha: f32) {
        if let Some(i) = self.index(x, y) {
            self.pixels[i] = self.pixels[i].mix(color, alpha);
        }
    }

    /// Number of pixels exactly equal to `color`.
    pub fn count_color(&self, color: Color) -> usize {
        self.pixels.iter().filter(|&&p| p == color).count()
    }

    /// Fills the `width`×`height` rectangle whose top-left corner is (`x`, `y`).
    pub fn fill_rect(&mut self, x: i32, y: i32, width: u32, height: u32, color: Color) {
        let x0 = (x as i64).max(0);
        let y0 = (y as i64).max(0);
        let x1 = (x as i64 + width as i64).min(self.width as i64);
        let y1 = (y as i64 + height as i64).min(self.height as i64);
        if x0 >= x1 {
            return;
        }
        for row in y0..y1 {
            let start = row as usize * self.width as usize;
            self.pixels[start + x0 as usize..start + x1 as usize].fill(color);
        }
    }

    /// Draws a one-pixel outline of the rectangle.
    pub fn stroke_rect(&mut self, x: i32, y: i32, width: u32, height: u32, color: Color) {
        if width == 0 || height == 0 {
            return;
        }
        self.fill_rect(x, y, width, 1, color);
        self.fill_rect(x, y + height as i32 - 1, width, 1, color);
        self.fill_rect(x, y, 1, height, color);
        self.fill_rect(x + width as i32 - 1, y, 1, height, color);
    }

    /// A `thickness`-pixel square centred (for odd thickness) on (`x`, `y`).
    fn stamp(&mut self, x: i32, y: i32, thickness: u32, color: Color) {
        let before = (thickness.max(1) as i32 - 1) / 2;
        self.fill_rect(
            x - before,
            y - before,
            thickness.max(1),
            thickness.max(1),
            color,
        );
    }

    /// Draws a straight line with Bresenham's algorithm; thickness > 1 stamps a square
    /// brush at every step, which keeps diagonal and axis-aligned lines equally heavy.
    pub fn line(&mut self, from: (i32, i32), to: (i32, i32), thickness: u32, color: Color) {
        for (x, y) in bresenham(from, to) {
            self.stamp(x, y, thickness, color);
        }
    }

    /// A line drawn as `dash` pixels on, `gap` pixels off, starting with a dash.
    pub fn dashed_line(
        &mut self,
        from: (i32, i32),
        to: (i32, i32),
        thickness: u32,
        dash: u32,
        gap: u32,
        color: Color,
    ) {
        let period = (dash + gap).max(1);
        for (step, (x, y)) in bresenham(from, to).enumerate() {
            if (step as u32 % period) < dash {
                self.stamp(x, y, thickness, color);
            }
        }
    }

    /// Fills the disc of the given radius around (`cx`, `cy`); radius 0 is one pixel.
    pub fn fill_circle(&mut self, cx: i32, cy: i32, radius: u32, color: Color) {
        let r = radius as i64;
        for dy in -r..=r {
            // Widest run on this row whose pixels satisfy dx² + dy² <= r² (+ r to round).
            let limit = r * r + r - dy * dy;
            let mut half = 0i64;
            while (half + 1) * (half + 1) <= limit {
                half += 1;
            }
            self.fill_rect(
                (cx as i64 - half) as i32,
                (cy as i64 + dy) as i32,
                (2 * half + 1) as u32,
                1,
                color,
            );
        }
    }

    /// Fills the triangle with vertices at the given pixel centres. A pixel is inside
    /// when its centre lies inside or on an edge (edge functions over the bounding box),
    /// so either vertex order works and shared edges leave no gaps.
    pub fn fill_triangle(&mut self, a: (i32, i32), b: (i32, i32), c: (i32, i32), color: Color) {
        let edge = |p: (i64, i64), q: (i64, i64), r: (i64, i64)| {
            (q.0 - p.0) * (r.1 - p.1) - (q.1 - p.1) * (r.0 - p.0)
        };
        let (a64, b64, c64) = (
            (a.0 as i64, a.1 as i64),
            (b.0 as i64, b.1 as i64),
            (c.0 as i64, c.1 as i64),
        );
        let area = edge(a64, b64, c64);
        if area == 0 {
            // Degenerate: still show something rather than nothing.
            self.line(a, b, 1, color);
            self.line(b, c, 1, color);
            return;
        }
        let sign = area.signum();
        let min_x = a.0.min(b.0).min(c.0).max(0);
        let max_x = a.0.max(b.0).max(c.0).min(self.width as i32 - 1);
        let min_y = a.1.min(b.1).min(c.1).max(0);
        let max_y = a.1.max(b.1).max(c.1).min(self.height as i32 - 1);
        for y in min_y..=max_y {
            for x in min_x..=max_x {
                let p = (x as i64, y as i64);
                let inside = edge(a64, b64, p) * sign >= 0
                    && edge(b64, c64, p) * sign >= 0
                    && edge(c64, a64, p) * sign >= 0;
                if inside {
                    self.set_pixel(x, y, color);
                }
            }
        }
    }

    /// Draws text with the built-in font; see [`font::draw_text`].
    pub fn draw_text(&mut self, x: i32, y: i32, text: &str, scale: u32, color: Color) {
        font::draw_text(self, x, y, text, scale, color);
    }

    /// Draws text rotated to read bottom-to-top; see [`font::draw_text_vertical`].
    pub fn draw_text_vertical(&mut self, x: i32, y: i32, text: &str, scale: u32, color: Color) {
        font::draw_text_vertical(self, x, y, text, scale, color);
    }

    /// Copies the canvas into an `image` RGB buffer.
    pub fn to_rgb_image(&self) -> RgbImage {
        let raw: Vec<u8> = self.pixels.iter().flat_map(|c| c.to_array()).collect();
        RgbImage::from_raw(self.width, self.height, raw)
            .expect("canvas holds exactly width * height pixels")
    }

    /// Writes the canvas as a PNG, atomically (see [`crate::io::save_png_atomic`]).
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<(), PlotError> {
        crate::io::save_png_atomic(&self.to_rgb_image(), path.as_ref())
    }
}

/// The pixels of the Bresenham line from `from` to `to`, both endpoints included.
fn bresenham(from: (i32, i32), to: (i32, i32)) -> impl Iterator<Item = (i32, i32)> {
    let (mut x, mut y) = (from.0 as i64, from.1 as i64);
    let (x1, y1) = (to.0 as i64, to.1 as i64);
    let dx = (x1 - x).abs();
    let dy = -(y1 - y).abs();
    let step_x = if x < x1 { 1 } else { -1 };
    let step_y = if y < y1 { 1 } else { -1 };
    let mut error = dx + dy;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let current = (x as i32, y as i32);
        if x == x1 && y == y1 {
            done = true;
        } else {
            let doubled = 2 * error;
            if doubled >= dy {
                error += dy;
                x += step_x;
            }
            if doubled <= dx {
                error += dx;
                y += step_y;
            }
        }
        Some(current)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BG: Color = Color::BLACK;
    const INK: Color = Color::WHITE;

    #[test]
    fn fill_rect_clips_at_every_edge() {
        let mut canvas = Canvas::new(10, 8, BG);
        canvas.fill_rect(-3, -3, 5, 5, INK);
        assert_eq!(canvas.count_color(INK), 4);
        canvas.fill_rect(8, 6, 10, 10, INK);
        assert_eq!(canvas.count_color(INK), 8);
        canvas.fill_rect(20, 20, 5, 5, INK);
        canvas.fill_rect(-20, 2, 5, 5, INK);
        assert_eq!(canvas.count_color(INK), 8);
        assert_eq!(canvas.pixel(0, 0), Some(INK));
        assert_eq!(canvas.pixel(9, 7), Some(INK));
        assert_eq!(canvas.pixel(10, 0), None);
    }

    #[test]
    fn bresenham_lines_hit_endpoints_and_are_connected() {
        for &(from, to) in &[
            ((0, 0), (9, 3)),
            ((9, 9), (0, 2)),
            ((3, 0), (3, 7)),
            ((5, 5), (5, 5)),
        ] {
            let points: Vec<_> = bresenham(from, to).collect();
            assert_eq!(points.first(), Some(&from));
            assert_eq!(points.last(), Some(&to));
            let expected_len = (to.0 - from.0).abs().max((to.1 - from.1).abs()) + 1;
            assert_eq!(points.len() as i32, expected_len);
            for pair in points.windows(2) {
                assert!((pair[0].0 - pair[1].0).abs() <= 1 && (pair[0].1 - pair[1].1).abs() <= 1);
            }
        }
    }

    #[test]
    fn thick_lines_cover_more_pixels() {
        let mut thin = Canvas::new(20, 20, BG);
        thin.line((2, 10), (17, 10), 1, INK);
        let mut thick = Canvas::new(20, 20, BG);
        thick.line((2, 10), (17, 10), 3, INK);
        assert_eq!(thin.count_color(INK), 16);
        assert_eq!(thick.count_color(INK), 18 * 3);
        assert_eq!(thick.pixel(10, 9), Some(INK));
        assert_eq!(thick.pixel(10, 11), Some(INK));
    }

    #[test]
    fn dashed_line_leaves_gaps() {
        let mut canvas = Canvas::new(20, 3, BG);
        canvas.dashed_line((0, 1), (19, 1), 1, 3, 2, INK);
        let lit: Vec<bool> = (0..20).map(|x| canvas.pixel(x, 1) == Some(INK)).collect();
        let expected: Vec<bool> = (0..20).map(|x| x % 5 < 3).collect();
        assert_eq!(lit, expected);
    }

    #[test]
    fn circle_is_symmetric_and_round() {
        let mut canvas = Canvas::new(21, 21, BG);
        canvas.fill_circle(10, 10, 6, INK);
        for y in 0..21 {
            for x in 0..21 {
                let p = canvas.pixel(x, y);
                assert_eq!(p, canvas.pixel(20 - x, y));
                assert_eq!(p, canvas.pixel(x, 20 - y));
                assert_eq!(p, canvas.pixel(y, x));
            }
        }
        let area = canvas.count_color(INK) as f64;
        let ideal = std::f64::consts::PI * 6.5 * 6.5;
        assert!((area - ideal).abs() / ideal < 0.1, "area {area} vs {ideal}");
        assert_eq!(canvas.pixel(10, 4), Some(INK));
        assert_eq!(canvas.pixel(10, 3), Some(BG));
        assert_eq!(
            canvas.pixel(5, 5),
            Some(BG),
            "corners of the bounding box stay empty"
        );

        let mut dot = Canvas::new(3, 3, BG);
        dot.fill_circle(1, 1, 0, INK);
        assert_eq!(dot.count_color(INK), 1);
    }

    #[test]
    fn triangle_fill_matches_the_area_and_ignores_winding() {
        let mut clockwise = Canvas::new(12, 12, BG);
        clockwise.fill_triangle((0, 0), (10, 0), (0, 10), INK);
        let mut counter = Canvas::new(12, 12, BG);
        counter.fill_triangle((0, 0), (0, 10), (10, 0), INK);
        assert_eq!(clockwise, counter);
        // Right triangle with legs of 10 px: pixel centres with x + y <= 10.
        assert_eq!(clockwise.count_color(INK), 66);
        assert_eq!(clockwise.pixel(5, 5), Some(INK));
        assert_eq!(clockwise.pixel(6, 5), Some(BG));
        // Everything filled is inside the hypotenuse.
        for y in 0..12 {
            for x in 0..12 {
                assert_eq!(clockwise.pixel(x, y) == Some(INK), x + y <= 10);
            }
        }
    }

    #[test]
    fn degenerate_triangle_still_draws() {
        let mut canvas = Canvas::new(10, 10, BG);
        canvas.fill_triangle((1, 1), (5, 5), (8, 8), INK);
        assert!(canvas.count_color(INK) >= 8);
    }

    #[test]
    fn blend_pixel_mixes_with_existing_colour() {
        let mut canvas = Canvas::new(1, 1, Color::rgb(0, 0, 0));
        canvas.blend_pixel(0, 0, Color::rgb(200, 100, 50), 0.5);
        assert_eq!(canvas.pixel(0, 0), Some(Color::rgb(100, 50, 25)));
    }

    #[test]
    fn rgb_image_round_trip() {
        let mut canvas = Canvas::new(4, 3, BG);
        canvas.set_pixel(3, 2, Color::rgb(1, 2, 3));
        let image = canvas.to_rgb_image();
        assert_eq!(image.get_pixel(3, 2).0, [1, 2, 3]);
        assert_eq!(Canvas::from_rgb_image(&image), canvas);
    }

    #[test]
    fn save_png_round_trips_through_the_image_crate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("canvas.png");
        let mut canvas = Canvas::new(17, 9, Color::rgb(10, 20, 30));
        canvas.fill_triangle((1, 1), (15, 2), (8, 8), Color::rgb(250, 0, 120));
        canvas.save_png(&path).unwrap();
        let decoded = image::open(&path).unwrap().to_rgb8();
        assert_eq!(Canvas::from_rgb_image(&decoded), canvas);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files left behind");
    }
}
