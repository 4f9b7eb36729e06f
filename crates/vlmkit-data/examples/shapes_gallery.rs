//! Renders a contact sheet of shapes samples (image, mask outline, question, answer)
//! for eyeballing the dataset.
//!
//! `cargo run -p vlmkit-data --example shapes_gallery -- /tmp/shapes.png [train|eval] [count]`

use vlmkit_data::shapes::{ShapesConfig, ShapesDataset, Split};
use vlmkit_data::DataError;
use vlmkit_plot::{Canvas, Color};

const ZOOM: u32 = 6;
const TILE_TEXT_LINES: u32 = 4;

fn main() -> Result<(), DataError> {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .unwrap_or_else(|| "shapes-gallery.png".to_owned());
    let split = match args.next().as_deref() {
        Some("eval") => Split::Eval,
        _ => Split::Train,
    };
    let count: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(12);
    let dataset = ShapesDataset::new(ShapesConfig::default(), split)?;

    let side = 32 * ZOOM;
    let tile_w = side.max(260) + 10;
    let tile_h = side + TILE_TEXT_LINES * 10 + 14;
    let columns = 4u32;
    let rows = (count as u32).div_ceil(columns);
    let mut sheet = Canvas::new(columns * tile_w, rows * tile_h, Color::WHITE);
    for index in 0..count {
        let sample = dataset.get(index);
        let (x0, y0) = (
            (index as u32 % columns * tile_w) as i32 + 5,
            (index as u32 / columns * tile_h) as i32 + 5,
        );
        for (x, y, pixel) in sample.image.enumerate_pixels() {
            let inside = sample
                .mask
                .as_ref()
                .is_some_and(|m| m.get_pixel(x, y).0[0] != 0);
            let color = Color::from(pixel.0);
            sheet.fill_rect(
                x0 + (x * ZOOM) as i32,
                y0 + (y * ZOOM) as i32,
                ZOOM,
                ZOOM,
                color,
            );
            if inside {
                // A small dot marks mask pixels without hiding the colour.
                sheet.fill_rect(
                    x0 + (x * ZOOM + ZOOM / 2) as i32,
                    y0 + (y * ZOOM + ZOOM / 2) as i32,
                    1,
                    1,
                    Color::WHITE,
                );
            }
        }
        let mut lines = vec![format!(
            "{} {}",
            sample.family,
            sample.pope.map(|p| p.to_string()).unwrap_or_default()
        )];
        lines.push(sample.question.clone());
        lines.extend(wrap(&format!("= {}", sample.answer), 42));
        for (line_index, line) in lines.iter().take(TILE_TEXT_LINES as usize + 1).enumerate() {
            sheet.draw_text(
                x0,
                y0 + side as i32 + 4 + line_index as i32 * 10,
                line,
                1,
                Color::INK,
            );
        }
    }
    sheet.save_png(&out)?;
    println!("wrote {out}");
    Ok(())
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let last = lines.last_mut().expect("non-empty");
        if !last.is_empty() && last.len() + 1 + word.len() > width {
            lines.push(word.to_owned());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}
