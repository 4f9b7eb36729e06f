//! Grouped bar charts, e.g. per-question-family accuracy for several runs, with an
//! optional dashed baseline (such as chance level) per group and optional error
//! bars (such as confidence intervals) per bar.

use std::path::Path;

use crate::canvas::Canvas;
use crate::color::{palette, Color};
use crate::error::PlotError;
use crate::font::text_width;
use crate::layout::{self, LegendEntry, Style};
use crate::ticks::Ticks;

/// Fraction of each group's width occupied by its bars; the rest separates groups.
const GROUP_FILL: f64 = 0.8;
/// Baselines are drawn in a neutral dark grey so they never read as a series.
const BASELINE_COLOR: Color = Color::rgb(70, 70, 70);
/// Error bars: black whiskers, distinct from every series and from the baselines.
pub const ERROR_BAR_COLOR: Color = Color::BLACK;

/// One named series: a value per group (missing or non-finite values draw no bar).
#[derive(Clone, Debug, PartialEq)]
pub struct BarSeries {
    pub name: String,
    pub values: Vec<f64>,
    /// Half-widths of error bars, one per group (empty: none; missing, zero or
    /// non-finite entries draw none).
    pub errors: Vec<f64>,
    pub color: Option<Color>,
}

/// Grouped bars: `groups.len()` groups, each with one bar per series.
#[derive(Clone, Debug, PartialEq)]
pub struct BarChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub groups: Vec<String>,
    pub series: Vec<BarSeries>,
    /// Per-group dashed marker (e.g. chance accuracy); `None` entries draw nothing.
    pub baselines: Vec<Option<f64>>,
    /// Fixed y range, e.g. `(0.0, 1.0)` for accuracies; otherwise fitted to the data.
    pub y_range: Option<(f64, f64)>,
    pub show_legend: bool,
}

impl BarChart {
    pub fn new(title: impl Into<String>) -> Self {
        BarChart {
            title: title.into(),
            x_label: String::new(),
            y_label: String::new(),
            groups: Vec::new(),
            series: Vec::new(),
            baselines: Vec::new(),
            y_range: None,
            show_legend: true,
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

    pub fn groups<I, S>(mut self, groups: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.groups = groups.into_iter().map(Into::into).collect();
        self
    }

    /// Adds a series with one value per group.
    pub fn series(mut self, name: impl Into<String>, values: Vec<f64>) -> Self {
        self.series.push(BarSeries {
            name: name.into(),
            values,
            errors: Vec::new(),
            color: None,
        });
        self
    }

    /// Adds a series with one value per group and an error bar of half-width
    /// `errors[g]` around each value (e.g. a 95% confidence interval).
    pub fn series_with_errors(
        mut self,
        name: impl Into<String>,
        values: Vec<f64>,
        errors: Vec<f64>,
    ) -> Self {
        self.series.push(BarSeries {
            name: name.into(),
            values,
            errors,
            color: None,
        });
        self
    }

    pub fn baselines(mut self, baselines: Vec<Option<f64>>) -> Self {
        self.baselines = baselines;
        self
    }

    pub fn y_range(mut self, min: f64, max: f64) -> Self {
        self.y_range = Some((min, max));
        self
    }

    pub fn legend(mut self, show: bool) -> Self {
        self.show_legend = show;
        self
    }

    fn color_of(&self, index: usize) -> Color {
        self.series[index].color.unwrap_or_else(|| palette(index))
    }

    fn value(&self, series: usize, group: usize) -> Option<f64> {
        self.series[series]
            .values
            .get(group)
            .copied()
            .filter(|v| v.is_finite())
    }

    fn error(&self, series: usize, group: usize) -> Option<f64> {
        self.series[series]
            .errors
            .get(group)
            .copied()
            .filter(|e| e.is_finite() && *e > 0.0)
    }

    fn baseline(&self, group: usize) -> Option<f64> {
        self.baselines
            .get(group)
            .copied()
            .flatten()
            .filter(|v| v.is_finite())
    }

    fn y_ticks(&self, target: usize) -> Ticks {
        if let Some((min, max)) = self.y_range {
            return Ticks::linear(min, max, target);
        }
        // Bars grow from zero, so zero is always on the axis.
        let mut min: f64 = 0.0;
        let mut max: f64 = 0.0;
        for group in 0..self.groups.len() {
            let values = (0..self.series.len()).flat_map(|s| {
                let value = self.value(s, group);
                let error = value.and(self.error(s, group)).unwrap_or(0.0);
                value.into_iter().flat_map(move |v| [v - error, v + error])
            });
            for value in values.chain(self.baseline(group)) {
                min = min.min(value);
                max = max.max(value);
            }
        }
        Ticks::linear(min, max, target)
    }

    pub fn render(&self, width: u32, height: u32) -> Canvas {
        let mut canvas = Canvas::new(width, height, Color::WHITE);
        let style = Style::for_size(width, height);
        let top = layout::draw_title(&mut canvas, &self.title, &style);
        let approximate_height = height as i32 - top - 4 * style.text_height();
        let ticks = self.y_ticks(layout::tick_target(
            approximate_height,
            40 * style.scale as i32,
        ));
        let area = layout::plot_area(
            &canvas,
            top,
            &ticks.labels,
            !self.x_label.is_empty(),
            !self.y_label.is_empty(),
            &style,
        );
        if !area.is_drawable() {
            return canvas;
        }
        layout::draw_y_axis(&mut canvas, &area, &ticks, &style);
        layout::draw_x_axis_line(&mut canvas, &area);
        layout::draw_axis_labels(&mut canvas, &area, &self.x_label, &self.y_label, &style);

        let value_y = |value: f64| area.y_at(ticks.fraction(value.clamp(ticks.min, ticks.max)));
        let zero_y = value_y(0.0);
        let group_count = self.groups.len().max(1);
        let group_width = area.width() as f64 / group_count as f64;
        let bar_width = group_width * GROUP_FILL / self.series.len().max(1) as f64;
        // A one-pixel gap between neighbouring bars once they are wide enough to spare it.
        let gap = if bar_width >= 4.0 { 1 } else { 0 };

        for (group, name) in self.groups.iter().enumerate() {
            let group_left = area.left as f64 + group as f64 * group_width;
            let bars_left = group_left + group_width * (1.0 - GROUP_FILL) / 2.0;
            for series in 0..self.series.len() {
                let Some(value) = self.value(series, group) else {
                    continue;
                };
                let x0 = (bars_left + series as f64 * bar_width).round() as i32;
                let x1 = (bars_left + (series + 1) as f64 * bar_width).round() as i32 - gap;
                let y = value_y(value);
                let (top_y, bottom_y) = (y.min(zero_y), y.max(zero_y));
                canvas.fill_rect(
                    x0,
                    top_y,
                    (x1 - x0).max(1) as u32,
                    (bottom_y - top_y + 1) as u32,
                    self.color_of(series),
                );
                if let Some(error) = self.error(series, group) {
                    // A whisker from value − error to value + error, clamped to
                    // the axis like the bars; caps half the bar wide mark the ends
                    // that lie on the axis (a clamped end has none).
                    let center = (x0 + x1) / 2;
                    let (low, high) = (value - error, value + error);
                    let thickness = style.line_thickness();
                    canvas.line(
                        (center, value_y(low)),
                        (center, value_y(high)),
                        thickness,
                        ERROR_BAR_COLOR,
                    );
                    let cap = ((x1 - x0) / 4).max(1);
                    for end in [low, high] {
                        if (ticks.min..=ticks.max).contains(&end) {
                            let y = value_y(end);
                            canvas.line(
                                (center - cap, y),
                                (center + cap, y),
                                thickness,
                                ERROR_BAR_COLOR,
                            );
                        }
                    }
                }
            }
            if let Some(baseline) = self.baseline(group) {
                let y = value_y(baseline);
                let from = (group_left.round() as i32 + 1, y);
                let to = ((group_left + group_width).round() as i32 - 2, y);
                canvas.dashed_line(
                    from,
                    to,
                    style.line_thickness(),
                    4 * style.scale,
                    3 * style.scale,
                    BASELINE_COLOR,
                );
            }
            let center = (group_left + group_width / 2.0).round() as i32;
            let label = fit_label(name, group_width as u32, style.scale);
            layout::draw_x_tick_label(&mut canvas, &area, center, &label, &style);
        }

        if self.show_legend {
            let mut entries: Vec<LegendEntry> = self
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
            if (0..self.groups.len()).any(|g| self.baseline(g).is_some()) {
                entries.push(LegendEntry {
                    label: "baseline".to_owned(),
                    color: BASELINE_COLOR,
                    dashed: true,
                });
            }
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

/// Truncates `label` so it fits in `max_width` pixels, so neighbouring group labels
/// never overlap.
fn fit_label(label: &str, max_width: u32, scale: u32) -> String {
    let mut fitted = String::new();
    for ch in label.chars() {
        fitted.push(ch);
        if text_width(&fitted, scale) > max_width.saturating_sub(2) {
            fitted.pop();
            break;
        }
    }
    fitted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> BarChart {
        BarChart::new("accuracy by family")
            .y_label("accuracy")
            .groups(["color", "count", "ocr"])
            .series("run-a", vec![0.9, 0.4, 0.2])
            .series("run-b", vec![0.5, 0.8, f64::NAN])
            .y_range(0.0, 1.0)
    }

    /// Height in pixels of the tallest run of `color` in column `x`.
    fn column_extent(canvas: &Canvas, x: u32, color: Color) -> u32 {
        (0..canvas.height)
            .filter(|&y| canvas.pixel(x, y) == Some(color))
            .count() as u32
    }

    #[test]
    fn bar_heights_are_proportional_to_values() {
        let canvas = chart().legend(false).render(600, 400);
        let a = palette(0);
        let heights: Vec<u32> = (0..canvas.width)
            .map(|x| column_extent(&canvas, x, a))
            .filter(|&h| h > 0)
            .collect();
        let tallest = *heights.iter().max().unwrap() as f64;
        let shortest = *heights.iter().min().unwrap() as f64;
        // 0.9 vs 0.2 of the same axis.
        assert!(
            (tallest / shortest - 4.5).abs() < 0.3,
            "{tallest} / {shortest}"
        );
    }

    #[test]
    fn missing_values_draw_no_bar() {
        let with_nan = chart().legend(false).render(600, 400);
        let b = palette(1);
        // run-b has two finite values: exactly two separate runs of columns.
        let columns: Vec<bool> = (0..with_nan.width)
            .map(|x| column_extent(&with_nan, x, b) > 0)
            .collect();
        let runs = columns.windows(2).filter(|w| !w[0] && w[1]).count();
        assert_eq!(runs, 2);
    }

    #[test]
    fn baselines_draw_dashes_and_a_legend_entry() {
        let plain = chart().render(600, 400);
        let with_baseline = chart()
            .baselines(vec![Some(1.0 / 6.0), None, Some(0.125)])
            .render(600, 400);
        assert_eq!(plain.count_color(BASELINE_COLOR), 0);
        assert!(with_baseline.count_color(BASELINE_COLOR) > 50);
    }

    #[test]
    fn error_bars_span_the_interval_around_each_value() {
        let plain = chart().legend(false).render(600, 400);
        assert_eq!(plain.count_color(ERROR_BAR_COLOR), 0);
        let with_errors = BarChart::new("accuracy by family")
            .groups(["color", "count", "ocr"])
            .series_with_errors("run-a", vec![0.5, 0.4, 0.2], vec![0.2, 0.0, f64::NAN])
            .y_range(0.0, 1.0)
            .legend(false)
            .render(600, 400);
        // Only the first group's bar has a (drawable) error: one whisker column run.
        let columns: Vec<u32> = (0..with_errors.width)
            .map(|x| column_extent(&with_errors, x, ERROR_BAR_COLOR))
            .collect();
        let whisker = *columns.iter().max().unwrap() as f64;
        let first = columns.iter().position(|&c| c > 0).unwrap();
        let last = columns.iter().rposition(|&c| c > 0).unwrap();
        // Caps are half a bar wide: well inside the first of three groups.
        assert!(
            last < with_errors.width as usize / 3 && last - first < 100,
            "whiskers on the first bar only: columns {first}..{last}"
        );
        // The whisker spans 0.4 of the axis; the 0.5 bar spans half of it.
        let bar = (0..with_errors.width)
            .map(|x| column_extent(&with_errors, x, palette(0)))
            .max()
            .unwrap() as f64;
        assert!(
            (whisker / bar - 0.8).abs() < 0.06,
            "whisker {whisker} px vs bar {bar} px"
        );
        // Errors widen an automatic range.
        let auto = BarChart::new("")
            .groups(["a"])
            .series_with_errors("x", vec![1.0], vec![0.5]);
        assert!(auto.y_ticks(5).max >= 1.5);
    }

    #[test]
    fn legend_lists_series() {
        let with_legend = chart().render(600, 400);
        let without = chart().legend(false).render(600, 400);
        assert_ne!(with_legend, without);
        let diff_ink =
            with_legend.count_color(Color::INK) as i64 - without.count_color(Color::INK) as i64;
        assert!(diff_ink > 20, "legend labels add text");
    }

    #[test]
    fn automatic_range_includes_zero_and_negative_values() {
        let chart = BarChart::new("delta")
            .groups(["a", "b"])
            .series("x", vec![-2.0, 3.0]);
        let ticks = chart.y_ticks(5);
        assert!(ticks.min <= -2.0 && ticks.max >= 3.0);
        assert!(chart.render(300, 200).count_color(palette(0)) > 50);
    }

    #[test]
    fn empty_charts_and_tiny_canvases_do_not_panic() {
        BarChart::new("empty").render(200, 100);
        BarChart::new("").groups(["a"]).render(200, 100);
        chart().render(5, 5);
        chart().render(0, 0);
    }

    #[test]
    fn long_labels_are_truncated_to_the_group_width() {
        assert_eq!(fit_label("existence", 1000, 1), "existence");
        let fitted = fit_label("existence", 30, 1);
        assert!(text_width(&fitted, 1) <= 28 && !fitted.is_empty());
    }

    #[test]
    fn save_png_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bars.png");
        chart().save_png(&path, 320, 240).unwrap();
        let decoded = image::open(&path).unwrap().to_rgb8();
        assert_eq!(decoded, chart().render(320, 240).to_rgb_image());
    }
}
