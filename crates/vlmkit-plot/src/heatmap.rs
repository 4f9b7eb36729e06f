//! Heatmaps of small 2-D grids, optionally overlaid on an image (e.g. attention over
//! image patches).

use std::path::Path;

use image::RgbImage;

use crate::canvas::Canvas;
use crate::color::{colormap, Color};
use crate::error::PlotError;
use crate::font::text_width;
use crate::layout::{self, Style};

/// A `rows`×`cols` grid of values, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Heatmap {
    pub title: String,
    pub rows: usize,
    pub cols: usize,
    pub values: Vec<f64>,
    /// Values mapped to the ends of the colormap; otherwise the finite min and max.
    pub range: Option<(f64, f64)>,
    /// Image shown under the cells and the opacity of the cells over it.
    pub overlay: Option<(RgbImage, f32)>,
    pub show_colorbar: bool,
}

impl Heatmap {
    /// A heatmap of `values` in row-major order; fails unless there are `rows * cols`.
    pub fn new(rows: usize, cols: usize, values: Vec<f64>) -> Result<Self, PlotError> {
        if values.len() != rows * cols {
            return Err(PlotError::GridMismatch {
                rows,
                cols,
                expected: rows * cols,
                actual: values.len(),
            });
        }
        Ok(Heatmap {
            title: String::new(),
            rows,
            cols,
            values,
            range: None,
            overlay: None,
            show_colorbar: true,
        })
    }

    /// A heatmap from equally long rows.
    pub fn from_rows(rows: &[Vec<f64>]) -> Result<Self, PlotError> {
        let cols = rows.first().map_or(0, Vec::len);
        let values: Vec<f64> = rows.iter().flatten().copied().collect();
        if rows.iter().any(|row| row.len() != cols) {
            return Err(PlotError::GridMismatch {
                rows: rows.len(),
                cols,
                expected: rows.len() * cols,
                actual: values.len(),
            });
        }
        Heatmap::new(rows.len(), cols, values)
    }

    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    pub fn range(mut self, min: f64, max: f64) -> Self {
        self.range = Some((min, max));
        self
    }

    /// Draws the cells over `image` (stretched to the grid) with opacity `alpha`.
    pub fn overlay(mut self, image: RgbImage, alpha: f32) -> Self {
        self.overlay = Some((image, alpha.clamp(0.0, 1.0)));
        self
    }

    pub fn colorbar(mut self, show: bool) -> Self {
        self.show_colorbar = show;
        self
    }

    /// The value range mapped onto the colormap.
    pub fn value_range(&self) -> (f64, f64) {
        if let Some(range) = self.range {
            return range;
        }
        let finite = self.values.iter().copied().filter(|v| v.is_finite());
        let (min, max) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        if min > max {
            (0.0, 1.0)
        } else {
            (min, max)
        }
    }

    /// The colour of a value under the current range (a flat range maps to the middle).
    pub fn color_of(&self, value: f64) -> Color {
        if !value.is_finite() {
            return Color::MISSING;
        }
        let (min, max) = self.value_range();
        let t = if max > min {
            (value - min) / (max - min)
        } else {
            0.5
        };
        colormap(t)
    }

    pub fn render(&self, width: u32, height: u32) -> Canvas {
        let mut canvas = Canvas::new(width, height, Color::WHITE);
        let style = Style::for_size(width, height);
        let top = layout::draw_title(&mut canvas, &self.title, &style);
        let (min, max) = self.value_range();
        let (min_label, max_label) = (format_value(min), format_value(max));
        let bar_width = 10 * style.scale as i32;
        let colorbar_width = if self.show_colorbar {
            style.pad
                + bar_width
                + style.pad / 2
                + text_width(&min_label, style.scale).max(text_width(&max_label, style.scale))
                    as i32
        } else {
            0
        };
        let available_w = width as i32 - 2 * style.pad - colorbar_width;
        let available_h = height as i32 - top - style.pad;
        if self.rows == 0 || self.cols == 0 || available_w < 1 || available_h < 1 {
            return canvas;
        }
        // Square cells: patches are square, and stretching would misplace attention.
        let cell = (available_w / self.cols as i32).min(available_h / self.rows as i32);
        if cell < 1 {
            return canvas;
        }
        let grid_w = cell * self.cols as i32;
        let grid_h = cell * self.rows as i32;
        let left = style.pad + (available_w - grid_w) / 2;
        let grid_top = top + (available_h - grid_h) / 2;

        let background = self
            .overlay
            .as_ref()
            .map(|(image, alpha)| (stretch(image, grid_w as u32, grid_h as u32), *alpha));
        for row in 0..self.rows {
            for col in 0..self.cols {
                let color = self.color_of(self.values[row * self.cols + col]);
                let x0 = left + col as i32 * cell;
                let y0 = grid_top + row as i32 * cell;
                match &background {
                    None => canvas.fill_rect(x0, y0, cell as u32, cell as u32, color),
                    Some((image, alpha)) => {
                        for dy in 0..cell {
                            for dx in 0..cell {
                                let (ix, iy) =
                                    ((x0 - left + dx) as u32, (y0 - grid_top + dy) as u32);
                                let under = Color::from(image.get_pixel(ix, iy).0);
                                canvas.set_pixel(x0 + dx, y0 + dy, under.mix(color, *alpha));
                            }
                        }
                    }
                }
            }
        }

        if self.show_colorbar {
            let bar_left = left + grid_w + style.pad;
            for dy in 0..grid_h {
                let t = 1.0 - dy as f64 / (grid_h - 1).max(1) as f64;
                canvas.fill_rect(bar_left, grid_top + dy, bar_width as u32, 1, colormap(t));
            }
            let text_x = bar_left + bar_width + style.pad / 2;
            canvas.draw_text(text_x, grid_top, &max_label, style.scale, Color::INK);
            canvas.draw_text(
                text_x,
                grid_top + grid_h - style.text_height(),
                &min_label,
                style.scale,
                Color::INK,
            );
        }
        canvas
    }

    /// Renders and writes a PNG atomically.
    pub fn save_png(
        &self,
        path: impl AsRef<Path>,
        width: u32,
        height: u32,
    ) -> Result<(), PlotError> {
        self.render(width, height).save_png(path)
    }
}

/// Nearest-neighbour resize: keeps patch boundaries sharp, unlike smoothing filters.
fn stretch(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    if image.width() == 0 || image.height() == 0 {
        return RgbImage::new(width, height);
    }
    RgbImage::from_fn(width, height, |x, y| {
        let sx = (x as u64 * image.width() as u64 / width as u64) as u32;
        let sy = (y as u64 * image.height() as u64 / height as u64) as u32;
        *image.get_pixel(sx, sy)
    })
}

/// Compact label for a colorbar end.
fn format_value(value: f64) -> String {
    if value != 0.0 && (value.abs() >= 1e4 || value.abs() < 1e-3) {
        return format!("{value:.2e}");
    }
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn mismatched_values_are_rejected() {
        let error = Heatmap::new(2, 3, vec![0.0; 5]).unwrap_err();
        assert!(matches!(
            error,
            PlotError::GridMismatch {
                expected: 6,
                actual: 5,
                ..
            }
        ));
        assert!(error.to_string().contains("2x3"));
        assert!(Heatmap::from_rows(&[vec![1.0, 2.0], vec![3.0]]).is_err());
        let ok = Heatmap::from_rows(&[vec![1.0, 2.0], vec![3.0, 4.0]]).unwrap();
        assert_eq!(
            (ok.rows, ok.cols, ok.values.clone()),
            (2, 2, vec![1.0, 2.0, 3.0, 4.0])
        );
    }

    #[test]
    fn cells_use_the_colormap_over_the_value_range() {
        let heatmap = Heatmap::new(1, 3, vec![2.0, 4.0, 6.0])
            .unwrap()
            .colorbar(false);
        assert_eq!(heatmap.value_range(), (2.0, 6.0));
        let canvas = heatmap.render(300, 120);
        for (value, t) in [(2.0, 0.0), (4.0, 0.5), (6.0, 1.0)] {
            assert_eq!(heatmap.color_of(value), colormap(t));
            assert!(canvas.count_color(colormap(t)) > 1000, "cell for {value}");
        }
    }

    #[test]
    fn flat_and_missing_values_do_not_panic() {
        let flat = Heatmap::new(2, 2, vec![1.0; 4]).unwrap();
        assert_eq!(flat.color_of(1.0), colormap(0.5));
        let missing = Heatmap::new(1, 2, vec![f64::NAN, 1.0])
            .unwrap()
            .colorbar(false);
        let canvas = missing.render(200, 100);
        assert!(canvas.count_color(Color::MISSING) > 100);
        Heatmap::new(0, 0, vec![]).unwrap().render(100, 100);
        Heatmap::new(4, 4, vec![0.5; 16]).unwrap().render(3, 3);
    }

    #[test]
    fn colorbar_adds_the_gradient() {
        let heatmap = Heatmap::new(2, 2, vec![0.0, 1.0, 2.0, 3.0]).unwrap();
        let with_bar = heatmap.render(300, 200);
        let without = heatmap.clone().colorbar(false).render(300, 200);
        // The gradient brings many intermediate colormap colours the four cells lack.
        let distinct = |canvas: &Canvas| {
            canvas
                .pixels
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len()
        };
        assert!(distinct(&with_bar) > distinct(&without) + 20);
        let near_middle = (0..=20).map(|i| colormap(0.45 + i as f64 * 0.005));
        assert!(near_middle.clone().any(|c| with_bar.count_color(c) > 0));
        assert!(near_middle.into_iter().all(|c| without.count_color(c) == 0));
    }

    #[test]
    fn overlay_blends_cells_with_the_image() {
        let image = RgbImage::from_fn(8, 8, |x, _| {
            if x < 4 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        });
        let heatmap = Heatmap::new(1, 2, vec![0.0, 1.0])
            .unwrap()
            .colorbar(false)
            .overlay(image, 0.5);
        let canvas = heatmap.render(200, 100);
        let left_expected = Color::rgb(255, 0, 0).mix(colormap(0.0), 0.5);
        let right_expected = Color::rgb(0, 0, 255).mix(colormap(1.0), 0.5);
        assert!(canvas.count_color(left_expected) > 1000);
        assert!(canvas.count_color(right_expected) > 1000);
        assert_eq!(canvas.count_color(colormap(0.0)), 0, "no unblended cells");
    }

    #[test]
    fn value_labels_are_compact() {
        assert_eq!(format_value(0.5), "0.5");
        assert_eq!(format_value(2.0), "2");
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(12345.0), "1.23e4");
        assert_eq!(format_value(0.0001), "1.00e-4");
    }

    #[test]
    fn save_png_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attention.png");
        let heatmap = Heatmap::new(4, 4, (0..16).map(f64::from).collect())
            .unwrap()
            .title("attn");
        heatmap.save_png(&path, 200, 160).unwrap();
        assert_eq!(
            image::open(&path).unwrap().to_rgb8(),
            heatmap.render(200, 160).to_rgb_image()
        );
    }
}
