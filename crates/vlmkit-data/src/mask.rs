//! Region masks: 8-bit grey images at image resolution where [`INSIDE`] marks the
//! region (e.g. the object a question is about) and 0 everything else.

use image::{GrayImage, Luma};

/// Mask value for pixels inside the region.
pub const INSIDE: u8 = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    #[error("mask sizes differ: {}x{} vs {}x{}", left.0, left.1, right.0, right.1)]
    SizeMismatch { left: (u32, u32), right: (u32, u32) },
    #[error("a {width}x{height} mask cannot be laid on a {rows}x{cols} grid")]
    GridMismatch {
        width: u32,
        height: u32,
        rows: u32,
        cols: u32,
    },
}

/// An all-outside mask.
pub fn empty(width: u32, height: u32) -> GrayImage {
    GrayImage::new(width, height)
}

/// Normalises any grey image to a strict mask: non-zero becomes [`INSIDE`].
pub fn binarize(mask: &GrayImage) -> GrayImage {
    let mut out = mask.clone();
    for pixel in out.pixels_mut() {
        if pixel.0[0] != 0 {
            *pixel = Luma([INSIDE]);
        }
    }
    out
}

/// Number of pixels inside the region.
pub fn area(mask: &GrayImage) -> u64 {
    mask.pixels().filter(|p| p.0[0] != 0).count() as u64
}

/// Whether no pixel is inside.
pub fn is_empty(mask: &GrayImage) -> bool {
    mask.pixels().all(|p| p.0[0] == 0)
}

fn check_same_size(left: &GrayImage, right: &GrayImage) -> Result<(), MaskError> {
    if left.dimensions() != right.dimensions() {
        return Err(MaskError::SizeMismatch {
            left: left.dimensions(),
            right: right.dimensions(),
        });
    }
    Ok(())
}

/// Pixels inside either mask.
pub fn union(left: &GrayImage, right: &GrayImage) -> Result<GrayImage, MaskError> {
    check_same_size(left, right)?;
    let mut out = binarize(left);
    for (pixel, other) in out.pixels_mut().zip(right.pixels()) {
        if other.0[0] != 0 {
            *pixel = Luma([INSIDE]);
        }
    }
    Ok(out)
}

/// Whether every pixel inside `inner` is also inside `outer`.
pub fn covers(outer: &GrayImage, inner: &GrayImage) -> Result<bool, MaskError> {
    check_same_size(outer, inner)?;
    Ok(outer
        .pixels()
        .zip(inner.pixels())
        .all(|(o, i)| i.0[0] == 0 || o.0[0] != 0))
}

/// Inclusive pixel bounds of the region, `None` when it is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskBounds {
    pub min_x: u32,
    pub min_y: u32,
    pub max_x: u32,
    pub max_y: u32,
}

pub fn bounds(mask: &GrayImage) -> Option<MaskBounds> {
    let mut bounds: Option<MaskBounds> = None;
    for (x, y, pixel) in mask.enumerate_pixels() {
        if pixel.0[0] == 0 {
            continue;
        }
        let b = bounds.get_or_insert(MaskBounds {
            min_x: x,
            min_y: y,
            max_x: x,
            max_y: y,
        });
        b.min_x = b.min_x.min(x);
        b.min_y = b.min_y.min(y);
        b.max_x = b.max_x.max(x);
        b.max_y = b.max_y.max(y);
    }
    bounds
}

/// Fraction of each cell of a `rows`×`cols` grid laid over the mask that lies
/// inside the region (area averaging, row-major) — the per-token target a
/// grounding loss compares attention with. Sizes need not divide: a pixel
/// straddling two cells counts in each by the share of it that falls there.
pub fn grid_coverage(mask: &GrayImage, rows: u32, cols: u32) -> Result<Vec<f32>, MaskError> {
    let (width, height) = mask.dimensions();
    let window = [0.0, 0.0, f64::from(width), f64::from(height)];
    grid_coverage_in(mask, window, rows, cols)
}

/// [`grid_coverage`] of the grid laid over `window` (`[x0, y0, x1, y1]` in the
/// mask's pixel units) instead of the whole mask: the part of the image an
/// image processor's output shows (see `ImageProcessor::source_window`). Outside
/// the mask (padding) nothing is covered.
pub fn grid_coverage_in(
    mask: &GrayImage,
    window: [f64; 4],
    rows: u32,
    cols: u32,
) -> Result<Vec<f32>, MaskError> {
    let (width, height) = mask.dimensions();
    if rows == 0 || cols == 0 || width == 0 || height == 0 {
        return Err(MaskError::GridMismatch {
            width,
            height,
            rows,
            cols,
        });
    }
    // overlaps[cell][pixel]: the length of pixel `pixel` inside cell `cell`, with
    // each cell `size / cells` pixels long.
    let overlaps = |start: f64, end: f64, size: u32, cells: u32| -> Vec<Vec<(usize, f64)>> {
        let step = (end - start) / cells as f64;
        (0..cells)
            .map(|cell| {
                let (lo, hi) = (start + cell as f64 * step, start + (cell + 1) as f64 * step);
                (lo.floor().max(0.0) as u32..(hi.ceil().max(0.0) as u32).min(size))
                    .filter_map(|p| {
                        let overlap = hi.min(p as f64 + 1.0) - lo.max(p as f64);
                        (overlap > 0.0).then_some((p as usize, overlap))
                    })
                    .collect()
            })
            .collect()
    };
    let [x0, y0, x1, y1] = window;
    let (ys, xs) = (
        overlaps(y0, y1, height, rows),
        overlaps(x0, x1, width, cols),
    );
    let cell_area = ((y1 - y0) / rows as f64) * ((x1 - x0) / cols as f64);
    let inside = |x: usize, y: usize| f64::from(mask.get_pixel(x as u32, y as u32).0[0] != 0);
    let mut out = Vec::with_capacity((rows * cols) as usize);
    for row in &ys {
        for col in &xs {
            let covered: f64 = row
                .iter()
                .map(|&(y, wy)| {
                    col.iter()
                        .map(|&(x, wx)| wy * wx * inside(x, y))
                        .sum::<f64>()
                })
                .sum();
            out.push((covered / cell_area) as f32);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_in_a_window_is_coverage_of_the_padded_and_cropped_mask() {
        // A 12×6 mask with a blob; the window pads 3 rows above and below (a
        // square) and then keeps all of it.
        let mut mask = empty(12, 6);
        for (x, y) in [(1, 0), (2, 0), (2, 1), (7, 4), (8, 5), (11, 5)] {
            mask.put_pixel(x, y, Luma([INSIDE]));
        }
        let mut padded = empty(12, 12);
        for (x, y, p) in mask.enumerate_pixels() {
            padded.put_pixel(x, y + 3, *p);
        }
        let window = [0.0, -3.0, 12.0, 9.0];
        for grid in [(2, 2), (3, 3), (5, 7)] {
            assert_eq!(
                grid_coverage_in(&mask, window, grid.0, grid.1).unwrap(),
                grid_coverage(&padded, grid.0, grid.1).unwrap(),
                "{grid:?}"
            );
        }
        // A crop: columns 4..10 of the mask.
        let mut cropped = empty(6, 6);
        for y in 0..6 {
            for x in 0..6 {
                cropped.put_pixel(x, y, *mask.get_pixel(x + 4, y));
            }
        }
        assert_eq!(
            grid_coverage_in(&mask, [4.0, 0.0, 10.0, 6.0], 3, 3).unwrap(),
            grid_coverage(&cropped, 3, 3).unwrap()
        );
    }

    fn mask_with(width: u32, height: u32, inside: &[(u32, u32)]) -> GrayImage {
        let mut mask = empty(width, height);
        for &(x, y) in inside {
            mask.put_pixel(x, y, Luma([INSIDE]));
        }
        mask
    }

    #[test]
    fn binarize_maps_any_non_zero_to_inside() {
        let mut grey = empty(3, 1);
        grey.put_pixel(1, 0, Luma([1]));
        grey.put_pixel(2, 0, Luma([200]));
        assert_eq!(binarize(&grey).into_raw(), vec![0, INSIDE, INSIDE]);
    }

    #[test]
    fn area_emptiness_and_bounds() {
        let mask = mask_with(8, 8, &[(2, 3), (5, 1), (4, 6)]);
        assert_eq!(area(&mask), 3);
        assert!(!is_empty(&mask));
        assert_eq!(
            bounds(&mask),
            Some(MaskBounds {
                min_x: 2,
                min_y: 1,
                max_x: 5,
                max_y: 6
            })
        );
        assert!(is_empty(&empty(4, 4)));
        assert_eq!(bounds(&empty(4, 4)), None);
    }

    #[test]
    fn union_and_covers() {
        let a = mask_with(4, 4, &[(0, 0), (1, 1)]);
        let b = mask_with(4, 4, &[(1, 1), (3, 3)]);
        let both = union(&a, &b).unwrap();
        assert_eq!(area(&both), 3);
        assert!(covers(&both, &a).unwrap() && covers(&both, &b).unwrap());
        assert!(!covers(&a, &b).unwrap());
        let error = union(&a, &empty(5, 4)).unwrap_err();
        assert_eq!(
            error,
            MaskError::SizeMismatch {
                left: (4, 4),
                right: (5, 4)
            }
        );
    }

    #[test]
    fn grid_coverage_averages_the_area_of_each_cell() {
        // 4x4 mask, 2x2 grid: top-left cell fully inside, bottom-right one pixel.
        let mask = mask_with(4, 4, &[(0, 0), (1, 0), (0, 1), (1, 1), (3, 3)]);
        assert_eq!(
            grid_coverage(&mask, 2, 2).unwrap(),
            vec![1.0, 0.0, 0.0, 0.25]
        );
        assert!(matches!(
            grid_coverage(&mask, 0, 2),
            Err(MaskError::GridMismatch { rows: 0, .. })
        ));
        // Cells that do not divide the pixels: a 3-pixel-wide mask on 2 columns,
        // the middle pixel shared half and half.
        let mask = mask_with(3, 1, &[(1, 0)]);
        let cov = grid_coverage(&mask, 1, 2).unwrap();
        assert!(
            (cov[0] - 1.0 / 3.0).abs() < 1e-6 && (cov[1] - 1.0 / 3.0).abs() < 1e-6,
            "{cov:?}"
        );
        // Coverage times cell area adds up to the region's area.
        let mask = mask_with(7, 5, &[(0, 0), (3, 2), (6, 4), (5, 1)]);
        let cov = grid_coverage(&mask, 3, 4).unwrap();
        let total: f32 = cov.iter().sum::<f32>() * (7.0 / 4.0) * (5.0 / 3.0);
        assert!((total - 4.0).abs() < 1e-4, "{total}");
        assert!(cov.iter().all(|&c| (0.0..=1.0).contains(&c)));
    }
}
