//! Renders one of each chart type into a directory, for eyeballing the output.
//!
//! `cargo run -p vlmkit-plot --example plot_gallery -- /tmp/gallery`

use std::path::PathBuf;

use vlmkit_plot::{BarChart, Heatmap, LinePlot, PlotError, Series};

fn main() -> Result<(), PlotError> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "plot-gallery".to_owned()),
    );
    std::fs::create_dir_all(&out).map_err(|source| PlotError::Io {
        path: out.clone(),
        source,
    })?;

    // A noisy, decaying loss curve made from a tiny deterministic hash.
    let noise =
        |i: u64| ((i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f64 / (1u64 << 24) as f64) - 0.5;
    let train: Vec<(f64, f64)> = (0..400)
        .map(|i| {
            (
                i as f64,
                3.0 * (-(i as f64) / 120.0).exp() + 0.3 + 0.4 * noise(i),
            )
        })
        .collect();
    let eval: Vec<(f64, f64)> = (0..=8)
        .map(|i| {
            (
                i as f64 * 50.0,
                3.0 * (-(i as f64 * 50.0) / 140.0).exp() + 0.45,
            )
        })
        .collect();
    LinePlot::new("Training loss")
        .x_label("step")
        .y_label("loss")
        .with_series(Series::new("train", train.clone()).smoothed(20))
        .with_series(Series::new("eval", eval))
        .save_png(out.join("loss.png"), 640, 400)?;
    LinePlot::new("Loss (log)")
        .x_label("step")
        .y_label("loss")
        .log_y(true)
        .with_series(Series::new("train", train).smoothed(20))
        .save_png(out.join("loss_log.png"), 480, 320)?;

    BarChart::new("Accuracy by family")
        .y_label("accuracy")
        .groups([
            "describe",
            "color",
            "count",
            "position",
            "existence",
            "relation",
            "ocr",
        ])
        .series("baseline-run", vec![0.2, 0.55, 0.4, 0.5, 0.7, 0.6, 0.3])
        .series("grounded", vec![0.3, 0.9, 0.6, 0.8, 0.85, 0.7, 0.6])
        .baselines(vec![
            None,
            Some(1.0 / 6.0),
            Some(0.2),
            Some(0.25),
            Some(0.5),
            Some(0.5),
            Some(0.125),
        ])
        .y_range(0.0, 1.0)
        .save_png(out.join("bars.png"), 640, 400)?;

    let values: Vec<f64> = (0..16)
        .map(|i| ((i % 4) as f64 - 1.5).powi(2) + (i / 4) as f64)
        .collect();
    let heatmap = Heatmap::new(4, 4, values)
        .expect("16 values")
        .title("Attention");
    heatmap.save_png(out.join("heatmap.png"), 320, 260)?;
    let image = image::RgbImage::from_fn(32, 32, |x, y| {
        image::Rgb([(x * 8) as u8, (y * 8) as u8, 90])
    });
    heatmap
        .overlay(image, 0.5)
        .save_png(out.join("overlay.png"), 320, 260)?;
    println!("wrote charts to {}", out.display());
    Ok(())
}
