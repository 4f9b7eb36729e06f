//! Shared chart layout: margins, title, axes, tick labels and legend.

use crate::canvas::Canvas;
use crate::color::Color;
use crate::font::{text_height, text_width};
use crate::ticks::Ticks;

/// Sizes derived from the output resolution so text stays readable at any size.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Style {
    /// Font scale for tick labels, legend and axis labels.
    pub scale: u32,
    /// Font scale for the title.
    pub title_scale: u32,
    /// Generic spacing in pixels.
    pub pad: i32,
    /// Length of tick marks in pixels.
    pub tick: i32,
}

impl Style {
    pub fn for_size(width: u32, height: u32) -> Style {
        let shortest = width.min(height);
        let scale = if shortest >= 600 { 2 } else { 1 };
        let title_scale = if shortest >= 240 { scale + 1 } else { scale };
        Style {
            scale,
            title_scale,
            pad: 6 * scale as i32,
            tick: 3 * scale as i32,
        }
    }

    pub fn text_height(&self) -> i32 {
        text_height(self.scale) as i32
    }

    pub fn line_thickness(&self) -> u32 {
        self.scale + 1
    }
}

/// The data rectangle: `left..right` × `top..bottom` (exclusive ends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PlotArea {
    pub left: i32,
    pub top: i32,
    pub right: i32,
    pub bottom: i32,
}

impl PlotArea {
    pub fn width(&self) -> i32 {
        self.right - self.left
    }

    pub fn height(&self) -> i32 {
        self.bottom - self.top
    }

    pub fn is_drawable(&self) -> bool {
        self.width() >= 2 && self.height() >= 2
    }

    /// Pixel column for a horizontal axis fraction (0 = left edge, 1 = right edge).
    pub fn x_at(&self, fraction: f64) -> i32 {
        self.left + (clamp_fraction(fraction) * (self.width() - 1) as f64).round() as i32
    }

    /// Pixel row for a vertical axis fraction (0 = bottom edge, 1 = top edge).
    pub fn y_at(&self, fraction: f64) -> i32 {
        self.bottom - 1 - (clamp_fraction(fraction) * (self.height() - 1) as f64).round() as i32
    }

    pub fn contains(&self, x: i32, y: i32) -> bool {
        x >= self.left && x < self.right && y >= self.top && y < self.bottom
    }
}

/// Keeps far out-of-range positions (from extreme values) representable as pixel
/// coordinates; such points land off the plot and are clipped by the canvas.
fn clamp_fraction(fraction: f64) -> f64 {
    fraction.clamp(-8.0, 9.0)
}

/// Draws the title centred at the top; returns the y coordinate below it.
pub(crate) fn draw_title(canvas: &mut Canvas, title: &str, style: &Style) -> i32 {
    if title.is_empty() {
        return style.pad;
    }
    let width = text_width(title, style.title_scale) as i32;
    let x = (canvas.width as i32 - width) / 2;
    canvas.draw_text(x.max(0), style.pad, title, style.title_scale, Color::INK);
    style.pad * 2 + text_height(style.title_scale) as i32
}

/// Margins for a chart with y tick labels on the left and one row of x labels below.
pub(crate) fn plot_area(
    canvas: &Canvas,
    top: i32,
    y_tick_labels: &[String],
    has_x_label: bool,
    has_y_label: bool,
    style: &Style,
) -> PlotArea {
    let label_width = y_tick_labels
        .iter()
        .map(|label| text_width(label, style.scale) as i32)
        .max()
        .unwrap_or(0);
    let y_label_width = if has_y_label {
        style.text_height() + style.pad
    } else {
        0
    };
    let x_label_height = if has_x_label {
        style.text_height() + style.pad
    } else {
        0
    };
    let left = style.pad + y_label_width + label_width + style.pad / 2 + style.tick;
    let bottom = canvas.height as i32
        - (style.pad + x_label_height + style.text_height() + style.pad / 2 + style.tick);
    let right = canvas.width as i32 - 2 * style.pad;
    PlotArea {
        left,
        top,
        right,
        bottom,
    }
}

/// A rough tick count that keeps labels from crowding along `length` pixels.
pub(crate) fn tick_target(length: i32, spacing: i32) -> usize {
    (length / spacing.max(1)).clamp(2, 10) as usize
}

/// Horizontal grid lines, the left axis line and y tick labels.
pub(crate) fn draw_y_axis(canvas: &mut Canvas, area: &PlotArea, ticks: &Ticks, style: &Style) {
    for (value, label) in ticks.values.iter().zip(&ticks.labels) {
        let y = area.y_at(ticks.fraction(*value));
        canvas.line((area.left, y), (area.right - 1, y), 1, Color::GRID);
        canvas.line(
            (area.left - style.tick, y),
            (area.left - 1, y),
            1,
            Color::INK,
        );
        let width = text_width(label, style.scale) as i32;
        canvas.draw_text(
            area.left - style.tick - style.pad / 2 - width,
            y - style.text_height() / 2,
            label,
            style.scale,
            Color::INK,
        );
    }
    canvas.line(
        (area.left - 1, area.top),
        (area.left - 1, area.bottom),
        1,
        Color::INK,
    );
}

/// The bottom axis line.
pub(crate) fn draw_x_axis_line(canvas: &mut Canvas, area: &PlotArea) {
    canvas.line(
        (area.left - 1, area.bottom),
        (area.right - 1, area.bottom),
        1,
        Color::INK,
    );
}

/// Text centred horizontally on `center_x`, just below the x axis.
pub(crate) fn draw_x_tick_label(
    canvas: &mut Canvas,
    area: &PlotArea,
    center_x: i32,
    label: &str,
    style: &Style,
) {
    let width = text_width(label, style.scale) as i32;
    let y = area.bottom + style.tick + style.pad / 2;
    canvas.draw_text(center_x - width / 2, y, label, style.scale, Color::INK);
}

/// Vertical grid lines, tick marks and labels for a numeric x axis.
pub(crate) fn draw_x_axis(canvas: &mut Canvas, area: &PlotArea, ticks: &Ticks, style: &Style) {
    for (value, label) in ticks.values.iter().zip(&ticks.labels) {
        let x = area.x_at(ticks.fraction(*value));
        canvas.line((x, area.top), (x, area.bottom - 1), 1, Color::GRID);
        canvas.line(
            (x, area.bottom),
            (x, area.bottom + style.tick),
            1,
            Color::INK,
        );
        draw_x_tick_label(canvas, area, x, label, style);
    }
    draw_x_axis_line(canvas, area);
}

/// Axis titles: x centred under the tick labels, y rotated along the left edge.
pub(crate) fn draw_axis_labels(
    canvas: &mut Canvas,
    area: &PlotArea,
    x_label: &str,
    y_label: &str,
    style: &Style,
) {
    if !x_label.is_empty() {
        let width = text_width(x_label, style.scale) as i32;
        let y = canvas.height as i32 - style.pad - style.text_height();
        let x = area.left + (area.width() - width) / 2;
        canvas.draw_text(x, y, x_label, style.scale, Color::INK);
    }
    if !y_label.is_empty() {
        let length = text_width(y_label, style.scale) as i32;
        let y = area.top + (area.height() - length) / 2;
        canvas.draw_text_vertical(style.pad, y, y_label, style.scale, Color::INK);
    }
}

/// One legend row.
#[derive(Clone, Debug)]
pub(crate) struct LegendEntry {
    pub label: String,
    pub color: Color,
    pub dashed: bool,
}

/// The legend box in the top-right corner of the plot area.
pub(crate) fn draw_legend(
    canvas: &mut Canvas,
    area: &PlotArea,
    entries: &[LegendEntry],
    style: &Style,
) {
    if entries.is_empty() {
        return;
    }
    let swatch = 12 * style.scale as i32;
    let row_height = style.text_height() + 3 * style.scale as i32;
    let label_width = entries
        .iter()
        .map(|entry| text_width(&entry.label, style.scale) as i32)
        .max()
        .unwrap_or(0);
    let box_width = style.pad + swatch + style.pad + label_width + style.pad;
    let box_height = style.pad + row_height * entries.len() as i32 + style.pad / 2;
    let x0 = area.right - box_width - style.pad;
    let y0 = area.top + style.pad;
    canvas.fill_rect(x0, y0, box_width as u32, box_height as u32, Color::WHITE);
    canvas.stroke_rect(x0, y0, box_width as u32, box_height as u32, Color::MISSING);
    for (row, entry) in entries.iter().enumerate() {
        let top = y0 + style.pad + row as i32 * row_height;
        let mid = top + style.text_height() / 2;
        let from = (x0 + style.pad, mid);
        let to = (x0 + style.pad + swatch - 1, mid);
        if entry.dashed {
            canvas.dashed_line(
                from,
                to,
                style.line_thickness(),
                3 * style.scale,
                2 * style.scale,
                entry.color,
            );
        } else {
            canvas.line(from, to, style.line_thickness(), entry.color);
        }
        let text_x = x0 + style.pad + swatch + style.pad;
        canvas.draw_text(text_x, top, &entry.label, style.scale, Color::INK);
    }
}
