//! Colours, the series palette and the heatmap colormap.

/// An 8-bit sRGB colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Color {
    pub r: u8,
    pub g: u8,
    pub b: u8,
}

impl Color {
    pub const WHITE: Color = Color::rgb(255, 255, 255);
    pub const BLACK: Color = Color::rgb(0, 0, 0);
    /// Axis lines and text.
    pub const INK: Color = Color::rgb(30, 30, 30);
    /// Background grid lines: light enough not to compete with data.
    pub const GRID: Color = Color::rgb(228, 228, 228);
    /// Missing values in heatmaps.
    pub const MISSING: Color = Color::rgb(160, 160, 160);

    pub const fn rgb(r: u8, g: u8, b: u8) -> Self {
        Color { r, g, b }
    }

    /// Linear interpolation: `t = 0` gives `self`, `t = 1` gives `other`.
    pub fn mix(self, other: Color, t: f32) -> Color {
        let t = t.clamp(0.0, 1.0);
        let channel = |a: u8, b: u8| (a as f32 + (b as f32 - a as f32) * t).round() as u8;
        Color::rgb(
            channel(self.r, other.r),
            channel(self.g, other.g),
            channel(self.b, other.b),
        )
    }

    pub fn to_array(self) -> [u8; 3] {
        [self.r, self.g, self.b]
    }
}

impl From<[u8; 3]> for Color {
    fn from([r, g, b]: [u8; 3]) -> Self {
        Color::rgb(r, g, b)
    }
}

impl From<Color> for [u8; 3] {
    fn from(color: Color) -> Self {
        color.to_array()
    }
}

/// Fixed series palette: ten well-separated hues, cycled when there are more series.
pub const PALETTE: [Color; 10] = [
    Color::rgb(31, 119, 180),
    Color::rgb(255, 127, 14),
    Color::rgb(44, 160, 44),
    Color::rgb(214, 39, 40),
    Color::rgb(148, 103, 189),
    Color::rgb(140, 86, 75),
    Color::rgb(227, 119, 194),
    Color::rgb(127, 127, 127),
    Color::rgb(188, 189, 34),
    Color::rgb(23, 190, 207),
];

/// The palette colour for the `index`-th series.
pub fn palette(index: usize) -> Color {
    PALETTE[index % PALETTE.len()]
}

/// Anchor points of a viridis-like colormap (dark purple → blue → green → yellow),
/// interpolated piecewise-linearly. Perceptually ordered, readable in greyscale.
const COLORMAP_ANCHORS: [Color; 9] = [
    Color::rgb(68, 1, 84),
    Color::rgb(71, 44, 122),
    Color::rgb(59, 81, 139),
    Color::rgb(44, 113, 142),
    Color::rgb(33, 144, 141),
    Color::rgb(39, 173, 129),
    Color::rgb(92, 200, 99),
    Color::rgb(170, 220, 50),
    Color::rgb(253, 231, 37),
];

/// Maps `t` in `[0, 1]` (clamped; NaN maps to [`Color::MISSING`]) to the colormap.
pub fn colormap(t: f64) -> Color {
    if t.is_nan() {
        return Color::MISSING;
    }
    let t = t.clamp(0.0, 1.0);
    let last = COLORMAP_ANCHORS.len() - 1;
    let position = t * last as f64;
    let lower = (position.floor() as usize).min(last - 1);
    let fraction = (position - lower as f64) as f32;
    COLORMAP_ANCHORS[lower].mix(COLORMAP_ANCHORS[lower + 1], fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_interpolates_endpoints_and_middle() {
        let a = Color::rgb(0, 100, 200);
        let b = Color::rgb(200, 100, 0);
        assert_eq!(a.mix(b, 0.0), a);
        assert_eq!(a.mix(b, 1.0), b);
        assert_eq!(a.mix(b, 0.5), Color::rgb(100, 100, 100));
        assert_eq!(a.mix(b, 7.0), b, "t is clamped");
    }

    #[test]
    fn palette_cycles_and_is_distinct() {
        assert_eq!(palette(0), palette(PALETTE.len()));
        for (i, a) in PALETTE.iter().enumerate() {
            for b in &PALETTE[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn colormap_is_monotone_in_brightness_and_clamped() {
        let luminance = |c: Color| 0.299 * c.r as f64 + 0.587 * c.g as f64 + 0.114 * c.b as f64;
        let mut previous = -1.0;
        for step in 0..=100 {
            let value = luminance(colormap(step as f64 / 100.0));
            assert!(value >= previous - 1e-9, "luminance drops at step {step}");
            previous = value;
        }
        assert_eq!(colormap(-3.0), colormap(0.0));
        assert_eq!(colormap(3.0), colormap(1.0));
        assert_eq!(colormap(1.0), COLORMAP_ANCHORS[8]);
        assert_eq!(colormap(f64::NAN), Color::MISSING);
    }
}
