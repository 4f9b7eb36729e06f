//! Line plots for training curves: several named series, optional log-y and
//! moving-average smoothing.

use std::path::Path;

use crate::canvas::Canvas;
use crate::color::{palette, Color};
use crate::error::PlotError;
use crate::layout::{self, LegendEntry, PlotArea, Style};
use crate::ticks::Ticks;

/// How strongly the raw curve is washed out towards white when a smoothed curve is
/// drawn on top: faint enough to read as context, not as the signal.
const RAW_FADE: f32 = 0.65;

/// One named curve.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Trailing moving-average window; `None` (or a window ≤ 1) draws the raw curve only.
    pub smoothing: Option<usize>,
    /// Overrides the palette colour.
    pub color: Option<Color>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
            smoothing: None,
            color: None,
        }
    }

    /// Draws the raw points faintly and their `window`-point moving average strongly.
    pub fn smoothed(mut self, window: usize) -> Self {
        self.smoothing = Some(window);
        self
    }

    pub fn with_color(mut self, color: Color) -> Self {
        self.color = Some(color);
        self
    }
}

/// A line chart with title, axis labels, legend and automatic ticks.
#[derive(Clone, Debug, PartialEq)]
pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_y: bool,
    pub show_legend: bool,
    pub series: Vec<Series>,
}

impl LinePlot {
    pub fn new(title: impl Into<String>) -> Self {
        LinePlot {
            title: title.into(),
            x_label: String::new(),
            y_label: String::new(),
            log_y: false,
            show_legend: true,
            series: Vec::new(),
        }
    }

    pub fn x_label(mut self, label: impl Into<String>) -> Self {
        self.x_label = label.into();
        self
    }

    pub fn y_label(mut self, label: impl Into<String>) -> Self {
        self.y_label = label.into();
        self
    }

    /// Logarithmic y axis; points with y ≤ 0 are then skipped.
    pub fn log_y(mut self, log_y: bool) -> Self {
        self.log_y = log_y;
        self
    }

    pub fn legend(mut self, show: bool) -> Self {
        self.show_legend = show;
        self
    }

    /// Adds a series (builder form).
    pub fn with_series(mut self, series: Series) -> Self {
        self.series.push(series);
        self
    }

    pub fn add_series(&mut self, series: Series) {
        self.series.push(series);
    }

    fn color_of(&self, index: usize) -> Color {
        self.series[index].color.unwrap_or_else(|| palette(index))
    }

    /// The points that can be drawn: finite, and positive in y on a log axis.
    fn drawable_points(&self, series: &Series) -> Vec<(f64, f64)> {
        series
            .points
            .iter()
            .copied()
            .filter(|&(x, y)| x.is_finite() && y.is_finite() && (!self.log_y || y > 0.0))
            .collect()
    }

    pub fn render(&self, width: u32, height: u32) -> Canvas {
        let mut canvas = Canvas::new(width, height, Color::WHITE);
        let style = Style::for_size(width, height);
        let top = layout::draw_title(&mut canvas, &self.title, &style);

        let curves: Vec<Vec<(f64, f64)>> = self
            .series
            .iter()
            .map(|s| self.drawable_points(s))
            .collect();
        let all = curves.iter().flatten();
        let (x_min, x_max) = min_max(all.clone().map(|p| p.0));
        let (y_min, y_max) = min_max(all.map(|p| p.1));

        let approximate_height = height as i32 - top - 4 * style.text_height();
        let y_ticks = if self.log_y {
            Ticks::log(y_min, y_max)
        } else {
            Ticks::linear(
                y_min,
                y_max,
                layout::tick_target(approximate_height, 40 * style.scale as i32),
            )
        };
        let area = layout::plot_area(
            &canvas,
            top,
            &y_ticks.labels,
            !self.x_label.is_empty(),
            !self.y_label.is_empty(),
            &style,
        );
        if !area.is_drawable() {
            return canvas;
        }
        let x_ticks = Ticks::linear(
            x_min,
            x_max,
            layout::tick_target(area.width(), 60 * style.scale as i32),
        );

        layout::draw_y_axis(&mut canvas, &area, &y_ticks, &style);
        layout::draw_x_axis(&mut canvas, &area, &x_ticks, &style);
        layout::draw_axis_labels(&mut canvas, &area, &self.x_label, &self.y_label, &style);

        let to_pixel = |&(x, y): &(f64, f64)| {
            (
                area.x_at(x_ticks.fraction(x)),
                area.y_at(y_ticks.fraction(y)),
            )
        };
        // Faint raw curves first so no strong curve is ever painted over by one.
        for (index, points) in curves.iter().enumerate() {
            if smoothing_window(&self.series[index]).is_some() {
                let faint = self.color_of(index).mix(Color::WHITE, RAW_FADE);
                draw_polyline(&mut canvas, &area, points.iter().map(to_pixel), 1, faint);
            }
        }
        for (index, points) in curves.iter().enumerate() {
            let color = self.color_of(index);
            let strong: Vec<(f64, f64)> = match smoothing_window(&self.series[index]) {
                Some(window) => {
                    let ys: Vec<f64> = points.iter().map(|p| p.1).collect();
                    let smoothed = moving_average(&ys, window);
                    points.iter().zip(smoothed).map(|(p, y)| (p.0, y)).collect()
                }
                None => points.clone(),
            };
            draw_polyline(
                &mut canvas,
                &area,
                strong.iter().map(to_pixel),
                style.line_thickness(),
                color,
            );
        }

        if self.show_legend {
            let entries: Vec<LegendEntry> = self
                .series
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.name.is_empty())
                .map(|(index, s)| LegendEntry {
                    label: s.name.clone(),
                    color: self.color_of(index),
                    dashed: false,
                })
                .collect();
            layout::draw_legend(&mut canvas, &area, &entries, &style);
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

fn smoothing_window(series: &Series) -> Option<usize> {
    series.smoothing.filter(|&window| window > 1)
}

/// Minimum and maximum of finite values; `(NaN, NaN)` when there are none, which the
/// tick builders turn into a default axis.
fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::NAN, f64::NAN), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

/// Connects the points; a lone point is drawn as a dot so it stays visible.
fn draw_polyline(
    canvas: &mut Canvas,
    area: &PlotArea,
    points: impl Iterator<Item = (i32, i32)>,
    thickness: u32,
    color: Color,
) {
    let points: Vec<(i32, i32)> = points.collect();
    match points.as_slice() {
        [] => {}
        [single] => canvas.fill_circle(single.0, single.1, thickness + 1, color),
        _ => {
            for pair in points.windows(2) {
                if area.contains(pair[0].0, pair[0].1) || area.contains(pair[1].0, pair[1].1) {
                    canvas.line(pair[0], pair[1], thickness, color);
                }
            }
        }
    }
}

/// Trailing moving average: element `i` is the mean of the last `window` values up to
/// and including `i` (fewer at the start). A window of 0 or 1 returns the input.
pub fn moving_average(values: &[f64], window: usize) -> Vec<f64> {
    let window = window.max(1);
    let mut sum = 0.0;
    let mut out = Vec::with_capacity(values.len());
    for (i, &value) in values.iter().enumerate() {
        sum += value;
        if i >= window {
            sum -= values[i - window];
        }
        out.push(sum / (i + 1).min(window) as f64);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descending(n: usize) -> Vec<(f64, f64)> {
        (0..n)
            .map(|i| (i as f64, 10.0 - 9.0 * i as f64 / (n - 1) as f64))
            .collect()
    }

    fn count_in(
        canvas: &Canvas,
        color: Color,
        x: std::ops::Range<u32>,
        y: std::ops::Range<u32>,
    ) -> usize {
        y.flat_map(|py| x.clone().map(move |px| (px, py)))
            .filter(|&(px, py)| canvas.pixel(px, py) == Some(color))
            .count()
    }

    #[test]
    fn moving_average_is_trailing_mean() {
        let smoothed = moving_average(&[1.0, 2.0, 3.0, 4.0, 5.0], 2);
        assert_eq!(smoothed, vec![1.0, 1.5, 2.5, 3.5, 4.5]);
        assert_eq!(moving_average(&[3.0, 1.0], 0), vec![3.0, 1.0]);
        assert_eq!(moving_average(&[2.0, 4.0, 6.0], 10), vec![2.0, 3.0, 4.0]);
        assert!(moving_average(&[], 3).is_empty());
    }

    #[test]
    fn series_are_drawn_in_palette_colours() {
        let plot = LinePlot::new("loss")
            .x_label("step")
            .y_label("loss")
            .with_series(Series::new("train", descending(50)))
            .with_series(Series::new("eval", vec![(0.0, 5.0), (49.0, 5.0)]));
        let canvas = plot.render(400, 300);
        assert!(canvas.count_color(palette(0)) > 100);
        assert!(canvas.count_color(palette(1)) > 100);
        // Axis and text ink exists, and the background dominates.
        assert!(canvas.count_color(Color::INK) > 200);
        assert!(canvas.count_color(Color::WHITE) > 400 * 300 / 2);
    }

    #[test]
    fn legend_appears_top_right_only_when_enabled() {
        // The curve descends to the bottom right, so the top-right corner holds only
        // the legend.
        let plot = LinePlot::new("").with_series(Series::new("train", descending(20)));
        let with_legend = plot.render(400, 300);
        let without = plot.clone().legend(false).render(400, 300);
        let color = palette(0);
        assert!(count_in(&with_legend, color, 250..400, 0..80) > 10);
        assert_eq!(count_in(&without, color, 250..400, 0..80), 0);
        assert!(
            count_in(&with_legend, Color::INK, 250..400, 0..80) > 20,
            "legend label text"
        );
    }

    #[test]
    fn smoothing_draws_faint_raw_and_strong_smoothed_curves() {
        let noisy: Vec<(f64, f64)> = (0..200)
            .map(|i| (i as f64, 5.0 + if i % 2 == 0 { 2.0 } else { -2.0 }))
            .collect();
        let color = palette(0);
        let faint = color.mix(Color::WHITE, RAW_FADE);
        let smoothed = LinePlot::new("").with_series(Series::new("a", noisy.clone()).smoothed(10));
        let canvas = smoothed.render(400, 300);
        assert!(canvas.count_color(faint) > 100, "raw curve drawn faint");
        assert!(
            canvas.count_color(color) > 100,
            "smoothed curve drawn strong"
        );

        let raw_only = LinePlot::new("")
            .with_series(Series::new("a", noisy))
            .render(400, 300);
        assert_eq!(raw_only.count_color(faint), 0);
    }

    #[test]
    fn non_finite_points_are_skipped() {
        let mut points = descending(10);
        points.insert(3, (3.5, f64::NAN));
        points.push((f64::INFINITY, 1.0));
        let with_bad = LinePlot::new("t")
            .with_series(Series::new("a", points))
            .render(300, 200);
        let clean = LinePlot::new("t")
            .with_series(Series::new("a", descending(10)))
            .render(300, 200);
        assert_eq!(with_bad, clean);
    }

    #[test]
    fn log_y_skips_non_positive_values_and_draws_the_rest() {
        let points: Vec<(f64, f64)> = (0..100)
            .map(|i| (i as f64, 10f64.powf(-(i as f64) / 30.0)))
            .collect();
        let mut with_zero = points.clone();
        with_zero.push((100.0, 0.0));
        let plot = LinePlot::new("")
            .log_y(true)
            .with_series(Series::new("a", with_zero));
        let canvas = plot.render(300, 200);
        assert!(canvas.count_color(palette(0)) > 100);
    }

    #[test]
    fn empty_single_point_and_tiny_canvases_do_not_panic() {
        let empty = LinePlot::new("empty").with_series(Series::new("none", vec![]));
        assert_eq!(empty.render(200, 150).width, 200);
        let single = LinePlot::new("one").with_series(Series::new("p", vec![(3.0, 7.0)]));
        let canvas = single.render(200, 150);
        assert!(
            canvas.count_color(palette(0)) > 10,
            "single point is drawn as a dot"
        );
        let all_nan = LinePlot::new("nan").with_series(Series::new("p", vec![(f64::NAN, 1.0)]));
        all_nan.render(200, 150);
        let extreme = LinePlot::new("huge")
            .with_series(Series::new("p", vec![(0.0, f64::MAX), (1.0, -f64::MAX)]));
        extreme.render(200, 150);
        for (w, h) in [(0, 0), (1, 1), (10, 10), (40, 30)] {
            single.render(w, h);
        }
    }

    #[test]
    fn save_png_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let plot =
            LinePlot::new("loss").with_series(Series::new("train", descending(30)).smoothed(5));
        plot.save_png(&path, 320, 240).unwrap();
        let decoded = image::open(&path).unwrap().to_rgb8();
        assert_eq!(decoded, plot.render(320, 240).to_rgb_image());
    }
}
