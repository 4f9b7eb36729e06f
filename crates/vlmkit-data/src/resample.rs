//! Pillow's bicubic resize of 8-bit images, bit for bit (`Image.resize(size,
//! Image.BICUBIC)` in Pillow 12, `src/libImaging/Resample.c`), because the
//! processors vision encoders were trained with (CLIP's, LLaVA's, SigLIP's) resize
//! through Pillow, and a resampler that differs by one level in a few pixels gives
//! the encoder other inputs than it saw in training.
//!
//! Per axis, each output pixel is a weighted sum of the input pixels under a
//! bicubic kernel (a = −0.5) widened by the scale when shrinking (antialiasing);
//! weights are normalised, then rounded to 22-bit fixed point, and each sum is
//! rounded and clipped to 8 bits. The horizontal pass runs first, over only the
//! rows the vertical pass reads, into an 8-bit image; then the vertical pass. The
//! rounding between the passes is why a float implementation cannot match.

use image::RgbImage;

/// Fixed-point precision of the 8-bit path: 32 − 8 − 2 bits.
const PRECISION_BITS: u32 = 22;

/// Pillow's bicubic kernel, a = −0.5.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// For each output pixel of one axis: the first input pixel it reads, and the
/// fixed-point weights of the input pixels from there on.
struct Coefficients {
    windows: Vec<(usize, Vec<i64>)>,
}

impl Coefficients {
    fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = 2.0 * filter_scale;
        let windows = (0..out_size)
            .map(|xx| {
                let center = (xx as f64 + 0.5) * scale;
                let ss = 1.0 / filter_scale;
                // C's (int) cast truncates toward zero; both values are ≥ −0.5 + …
                let xmin = ((center - support + 0.5) as i64).max(0) as usize;
                let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
                let count = xmax.saturating_sub(xmin);
                let weights: Vec<f64> = (0..count)
                    .map(|x| bicubic((x as f64 + xmin as f64 - center + 0.5) * ss))
                    .collect();
                // Summed in order, in f64, as Pillow does.
                let total: f64 = weights.iter().sum();
                let one = f64::from(1u32 << PRECISION_BITS);
                let fixed = weights
                    .iter()
                    .map(|&w| {
                        let w = if total != 0.0 { w / total } else { w };
                        // Round half away from zero.
                        if w < 0.0 {
                            (-0.5 + w * one) as i64
                        } else {
                            (0.5 + w * one) as i64
                        }
                    })
                    .collect();
                (xmin, fixed)
            })
            .collect();
        Self { windows }
    }

    /// The input range `[first, end)` that the output pixels read.
    fn span(&self) -> (usize, usize) {
        let first = self.windows.first().map_or(0, |(x, _)| *x);
        let end = self
            .windows
            .last()
            .map_or(0, |(x, weights)| x + weights.len());
        (first, end)
    }
}

/// Rounds a fixed-point sum to 8 bits: arithmetic shift, then clip.
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One pass along x over rows `rows` of `src`.
fn horizontal(src: &RgbImage, rows: (usize, usize), coefficients: &Coefficients) -> RgbImage {
    let out_width = coefficients.windows.len() as u32;
    let mut out = RgbImage::new(out_width, (rows.1 - rows.0) as u32);
    for (y_out, y) in (rows.0..rows.1).enumerate() {
        for (x_out, (xmin, weights)) in coefficients.windows.iter().enumerate() {
            let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
            for (i, &k) in weights.iter().enumerate() {
                let pixel = src.get_pixel((xmin + i) as u32, y as u32);
                for c in 0..3 {
                    acc[c] += i64::from(pixel[c]) * k;
                }
            }
            out.put_pixel(x_out as u32, y_out as u32, image::Rgb(acc.map(clip8)));
        }
    }
    out
}

/// One pass along y; `offset` is the first row of `src` in the coefficients'
/// numbering.
fn vertical(src: &RgbImage, offset: usize, coefficients: &Coefficients) -> RgbImage {
    let mut out = RgbImage::new(src.width(), coefficients.windows.len() as u32);
    for (y_out, (ymin, weights)) in coefficients.windows.iter().enumerate() {
        for x in 0..src.width() {
            let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
            for (i, &k) in weights.iter().enumerate() {
                let pixel = src.get_pixel(x, (ymin - offset + i) as u32);
                for c in 0..3 {
                    acc[c] += i64::from(pixel[c]) * k;
                }
            }
            out.put_pixel(x, y_out as u32, image::Rgb(acc.map(clip8)));
        }
    }
    out
}

/// `image` resized to `width × height` exactly as Pillow 12's
/// `Image.resize((width, height), Image.BICUBIC)` does.
pub fn resize_bicubic(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_width, in_height) = image.dimensions();
    if (in_width, in_height) == (width, height) {
        return image.clone();
    }
    let need_horizontal = width != in_width;
    let need_vertical = height != in_height;
    let rows = Coefficients::new(in_height as usize, height as usize);
    // The horizontal pass only produces the rows the vertical pass reads.
    let (first, end) = if need_vertical {
        rows.span()
    } else {
        (0, in_height as usize)
    };
    let mut out = if need_horizontal {
        horizontal(
            image,
            (first, end),
            &Coefficients::new(in_width as usize, width as usize),
        )
    } else {
        image.clone()
    };
    if need_vertical {
        let offset = if need_horizontal { first } else { 0 };
        out = vertical(&out, offset, &rows);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_is_bicubic_with_a_minus_half() {
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert_eq!(bicubic(2.0), 0.0);
        assert!((bicubic(0.5) - 0.5625).abs() < 1e-12);
        assert!((bicubic(1.5) + 0.0625).abs() < 1e-12);
    }

    #[test]
    fn fixed_point_weights_sum_to_one() {
        for (a, b) in [(37, 24), (24, 37), (640, 336), (13, 40), (7, 7)] {
            let c = Coefficients::new(a, b);
            for (_, w) in &c.windows {
                let sum: i64 = w.iter().sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= w.len() as i64,
                    "{a}→{b}"
                );
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat_and_the_same_size_is_a_copy() {
        let flat = RgbImage::from_pixel(37, 53, image::Rgb([200, 17, 90]));
        let resized = resize_bicubic(&flat, 24, 31);
        assert!(resized.pixels().all(|p| p.0 == [200, 17, 90]));
        assert_eq!(resize_bicubic(&flat, 37, 53), flat);
    }
}
