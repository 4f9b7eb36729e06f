//! A built-in 5×7 bitmap font.
//!
//! Each glyph is seven rows of a 5-bit mask; bit 4 is the leftmost column. Glyphs are
//! drawn on a 6-pixel advance (one blank column between characters), scaled by an
//! integer factor so text stays crisp at any size. Lowercase letters use the
//! uppercase glyphs; characters without a glyph are drawn as `?`.

use crate::canvas::Canvas;
use crate::color::Color;

/// Glyph width in pixels at scale 1.
pub const GLYPH_WIDTH: u32 = 5;
/// Glyph height in pixels at scale 1.
pub const GLYPH_HEIGHT: u32 = 7;
/// Horizontal distance between the starts of consecutive characters at scale 1.
pub const ADVANCE: u32 = GLYPH_WIDTH + 1;

/// The 5×7 bitmap for `ch`, or `None` if the font does not cover it.
pub fn glyph(ch: char) -> Option<[u8; 7]> {
    let rows = match ch.to_ascii_uppercase() {
        '0' => [
            0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110,
        ],
        '1' => [
            0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110,
        ],
        '2' => [
            0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111,
        ],
        '3' => [
            0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110,
        ],
        '4' => [
            0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010,
        ],
        '5' => [
            0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110,
        ],
        '6' => [
            0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110,
        ],
        '7' => [
            0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000,
        ],
        '8' => [
            0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110,
        ],
        '9' => [
            0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100,
        ],
        'A' => [
            0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001,
        ],
        'B' => [
            0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110,
        ],
        'C' => [
            0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110,
        ],
        'D' => [
            0b11100, 0b10010, 0b10001, 0b10001, 0b10001, 0b10010, 0b11100,
        ],
        'E' => [
            0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111,
        ],
        'F' => [
            0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000,
        ],
        'G' => [
            0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111,
        ],
        'H' => [
            0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001,
        ],
        'I' => [
            0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110,
        ],
        'J' => [
            0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100,
        ],
        'K' => [
            0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001,
        ],
        'L' => [
            0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111,
        ],
        'M' => [
            0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001,
        ],
        'N' => [
            0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001,
        ],
        'O' => [
            0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110,
        ],
        'P' => [
            0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000,
        ],
        'Q' => [
            0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101,
        ],
        'R' => [
            0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001,
        ],
        'S' => [
            0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110,
        ],
        'T' => [
            0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100,
        ],
        'U' => [
            0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110,
        ],
        'V' => [
            0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100,
        ],
        'W' => [
            0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010,
        ],
        'X' => [
            0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001,
        ],
        'Y' => [
            0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100, 0b00100,
        ],
        'Z' => [
            0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111,
        ],
        '.' => [
            0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100,
        ],
        ',' => [
            0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b00100, 0b01000,
        ],
        ':' => [
            0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b01100, 0b00000,
        ],
        '-' => [
            0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000,
        ],
        '+' => [
            0b00000, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000,
        ],
        '_' => [
            0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b11111,
        ],
        '/' => [
            0b00000, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b00000,
        ],
        '(' => [
            0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010,
        ],
        ')' => [
            0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000,
        ],
        '%' => [
            0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011,
        ],
        '=' => [
            0b00000, 0b00000, 0b11111, 0b00000, 0b11111, 0b00000, 0b00000,
        ],
        '<' => [
            0b00010, 0b00100, 0b01000, 0b10000, 0b01000, 0b00100, 0b00010,
        ],
        '>' => [
            0b01000, 0b00100, 0b00010, 0b00001, 0b00010, 0b00100, 0b01000,
        ],
        '?' => [
            0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b00000, 0b00100,
        ],
        '!' => [
            0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000, 0b00100,
        ],
        ' ' => [0; 7],
        _ => return None,
    };
    Some(rows)
}

/// Whether pixel (`col`, `row`) of a glyph is set; out-of-range coordinates are unset.
pub fn glyph_pixel(rows: &[u8; 7], col: u32, row: u32) -> bool {
    col < GLYPH_WIDTH
        && row < GLYPH_HEIGHT
        && rows[row as usize] & (1 << (GLYPH_WIDTH - 1 - col)) != 0
}

fn glyph_or_fallback(ch: char) -> [u8; 7] {
    glyph(ch).unwrap_or_else(|| glyph('?').expect("'?' is in the font"))
}

/// Width in pixels of `text` drawn at `scale` (no trailing gap after the last character).
pub fn text_width(text: &str, scale: u32) -> u32 {
    let chars = text.chars().count() as u32;
    if chars == 0 {
        0
    } else {
        (chars * ADVANCE - 1) * scale
    }
}

/// Height in pixels of one line of text at `scale`.
pub fn text_height(scale: u32) -> u32 {
    GLYPH_HEIGHT * scale
}

/// Draws `text` with its top-left corner at (`x`, `y`). Pixels off the canvas are clipped.
pub fn draw_text(canvas: &mut Canvas, x: i32, y: i32, text: &str, scale: u32, color: Color) {
    let scale = scale.max(1);
    let mut pen_x = x;
    for ch in text.chars() {
        let rows = glyph_or_fallback(ch);
        for row in 0..GLYPH_HEIGHT {
            for col in 0..GLYPH_WIDTH {
                if glyph_pixel(&rows, col, row) {
                    canvas.fill_rect(
                        pen_x + (col * scale) as i32,
                        y + (row * scale) as i32,
                        scale,
                        scale,
                        color,
                    );
                }
            }
        }
        pen_x += (ADVANCE * scale) as i32;
    }
}

/// Draws `text` rotated 90° counter-clockwise (reading bottom to top), as for a y-axis
/// label. (`x`, `y`) is the top-left corner of the rotated text's bounding box, which is
/// `text_height(scale)` wide and `text_width(text, scale)` tall.
pub fn draw_text_vertical(
    canvas: &mut Canvas,
    x: i32,
    y: i32,
    text: &str,
    scale: u32,
    color: Color,
) {
    let scale = scale.max(1);
    let bottom = y + text_width(text, scale) as i32;
    for (index, ch) in text.chars().enumerate() {
        let rows = glyph_or_fallback(ch);
        let char_bottom = bottom - (index as u32 * ADVANCE * scale) as i32;
        for row in 0..GLYPH_HEIGHT {
            for col in 0..GLYPH_WIDTH {
                if glyph_pixel(&rows, col, row) {
                    // Rotating CCW maps glyph column -> upward distance, glyph row -> x.
                    canvas.fill_rect(
                        x + (row * scale) as i32,
                        char_bottom - ((col + 1) * scale) as i32,
                        scale,
                        scale,
                        color,
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUIRED: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ.,:-+_/()%=<>?! ";

    #[test]
    fn covers_every_required_character() {
        for ch in REQUIRED.chars() {
            assert!(glyph(ch).is_some(), "missing glyph for {ch:?}");
        }
        assert_eq!(glyph('q'), glyph('Q'), "lowercase maps to uppercase");
        assert_eq!(glyph('é'), None);
        assert_eq!(glyph('#'), None);
    }

    #[test]
    fn glyphs_fit_five_columns_and_printable_ones_are_non_blank() {
        for ch in REQUIRED.chars() {
            let rows = glyph(ch).unwrap();
            assert!(
                rows.iter().all(|&row| row < 32),
                "{ch:?} is wider than 5 px"
            );
            let lit: u32 = rows.iter().map(|row| row.count_ones()).sum();
            assert_eq!(lit == 0, ch == ' ', "{ch:?} has {lit} lit pixels");
        }
    }

    #[test]
    fn letters_and_digits_are_pairwise_distinct() {
        // Letters are rendered into training images at scale 1, so every glyph the
        // model may have to read must be unambiguous.
        let alphanumeric: Vec<char> = REQUIRED.chars().filter(|c| c.is_alphanumeric()).collect();
        for (i, &a) in alphanumeric.iter().enumerate() {
            for &b in &alphanumeric[i + 1..] {
                assert_ne!(glyph(a), glyph(b), "{a:?} and {b:?} look identical");
            }
        }
    }

    #[test]
    fn text_measurements() {
        assert_eq!(text_width("", 1), 0);
        assert_eq!(text_width("A", 1), 5);
        assert_eq!(text_width("AB", 1), 11);
        assert_eq!(text_width("AB", 3), 33);
        assert_eq!(text_height(2), 14);
    }

    #[test]
    fn draw_text_reproduces_the_bitmap_at_scale_one() {
        let mut canvas = Canvas::new(7, 9, Color::BLACK);
        draw_text(&mut canvas, 1, 1, "K", 1, Color::WHITE);
        let rows = glyph('K').unwrap();
        for y in 0..9 {
            for x in 0..7 {
                let expected = x >= 1 && y >= 1 && glyph_pixel(&rows, x - 1, y - 1);
                let lit = canvas.pixel(x, y) == Some(Color::WHITE);
                assert_eq!(lit, expected, "pixel ({x}, {y})");
            }
        }
    }

    #[test]
    fn draw_text_scales_and_falls_back_to_question_mark() {
        let mut scaled = Canvas::new(20, 20, Color::BLACK);
        draw_text(&mut scaled, 0, 0, "I", 2, Color::WHITE);
        let lit_scaled = scaled.count_color(Color::WHITE);
        let lit_glyph: usize = glyph('I')
            .unwrap()
            .iter()
            .map(|r| r.count_ones() as usize)
            .sum();
        assert_eq!(lit_scaled, lit_glyph * 4);

        let mut unknown = Canvas::new(6, 7, Color::BLACK);
        draw_text(&mut unknown, 0, 0, "#", 1, Color::WHITE);
        let mut question = Canvas::new(6, 7, Color::BLACK);
        draw_text(&mut question, 0, 0, "?", 1, Color::WHITE);
        assert_eq!(unknown, question);
    }

    #[test]
    fn vertical_text_is_the_horizontal_text_rotated() {
        let text = "L1";
        let (w, h) = (text_width(text, 1), text_height(1));
        let mut horizontal = Canvas::new(w, h, Color::BLACK);
        draw_text(&mut horizontal, 0, 0, text, 1, Color::WHITE);
        let mut vertical = Canvas::new(h, w, Color::BLACK);
        draw_text_vertical(&mut vertical, 0, 0, text, 1, Color::WHITE);
        for y in 0..h {
            for x in 0..w {
                // CCW rotation: (x, y) -> (y, w - 1 - x).
                assert_eq!(
                    horizontal.pixel(x, y),
                    vertical.pixel(y, w - 1 - x),
                    "({x}, {y})"
                );
            }
        }
    }
}
