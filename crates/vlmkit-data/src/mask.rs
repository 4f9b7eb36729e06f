//! Region masks: 8-bit grey images at image resolution where [`INSIDE`] marks the
//! region (e.g. the object a question is about) and 0 everything else.

use image::{GrayImage, Luma};

/// Mask value for pixels inside the region.
pub const INSIDE: u8 = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    #[error("mask sizes differ: {}x{} vs {}x{}", left.0, left.1, right.0, right.1)]
    SizeMismatch { left: (u32, u32), right: (u32, u32) },
    #[error("a {width}x{height} mask cannot be split into a {grid}x{grid} patch grid")]
    GridMismatch { width: u32, height: u32, grid: u32 },
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

/// Fraction of each patch inside the region, for a `grid`×`grid` patch grid in
/// row-major order — the per-patch target a grounding loss compares attention with.
pub fn patch_coverage(mask: &GrayImage, grid: u32) -> Result<Vec<f32>, MaskError> {
    let (width, height) = mask.dimensions();
    if grid == 0 || width % grid != 0 || height % grid != 0 {
        return Err(MaskError::GridMismatch {
            width,
            height,
            grid,
        });
    }
    let (patch_w, patch_h) = (width / grid, height / grid);
    let mut inside = vec![0u32; (grid * grid) as usize];
    for (x, y, pixel) in mask.enumerate_pixels() {
        if pixel.0[0] != 0 {
            inside[((y / patch_h) * grid + x / patch_w) as usize] += 1;
        }
    }
    let patch_area = (patch_w * patch_h) as f32;
    Ok(inside.into_iter().map(|n| n as f32 / patch_area).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn patch_coverage_counts_per_patch_fractions() {
        // 4x4 mask, 2x2 grid: top-left patch fully inside, bottom-right one pixel.
        let mask = mask_with(4, 4, &[(0, 0), (1, 0), (0, 1), (1, 1), (3, 3)]);
        assert_eq!(patch_coverage(&mask, 2).unwrap(), vec![1.0, 0.0, 0.0, 0.25]);
        assert!(matches!(
            patch_coverage(&mask, 3),
            Err(MaskError::GridMismatch { grid: 3, .. })
        ));
        assert!(patch_coverage(&mask, 0).is_err());
    }
}
