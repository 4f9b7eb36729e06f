//! Atomic file writing and PNG encoding.
//!
//! Files are written to a temporary sibling and renamed into place, so a dashboard or
//! a resumed run that reads the path never observes a partially written file.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use image::{ImageBuffer, ImageFormat, PixelWithColorType};

use crate::error::PlotError;

/// Distinguishes temp files of concurrent writers within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_sibling(path: &Path) -> PathBuf {
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    let unique = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{file_name}.{}.{unique}.tmp", std::process::id()))
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory (so the
/// rename cannot cross file systems), flushed to disk, then renamed over `path`.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temp = temp_sibling(path);
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        // Best effort: the original error is the one worth reporting.
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Encodes an 8-bit image (RGB, grey, ...) as PNG bytes.
pub fn encode_png<P>(image: &ImageBuffer<P, Vec<u8>>) -> Result<Vec<u8>, image::ImageError>
where
    P: PixelWithColorType<Subpixel = u8>,
{
    let mut bytes = Vec::new();
    image.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)?;
    Ok(bytes)
}

/// Encodes `image` as PNG and writes it to `path` atomically.
pub fn save_png_atomic<P>(image: &ImageBuffer<P, Vec<u8>>, path: &Path) -> Result<(), PlotError>
where
    P: PixelWithColorType<Subpixel = u8>,
{
    if image.width() == 0 || image.height() == 0 {
        return Err(PlotError::EmptyImage {
            width: image.width(),
            height: image.height(),
        });
    }
    let bytes = encode_png(image).map_err(|source| PlotError::Encode {
        path: path.to_path_buf(),
        source,
    })?;
    write_file_atomic(path, &bytes).map_err(|source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma};

    #[test]
    fn atomic_write_replaces_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        write_file_atomic(&path, b"first").unwrap();
        write_file_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn atomic_write_into_missing_directory_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("data.bin");
        assert!(write_file_atomic(&path, b"x").is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn grey_png_round_trip_and_error_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mask.png");
        let mask = GrayImage::from_fn(5, 3, |x, y| Luma([(x * 50 + y) as u8]));
        save_png_atomic(&mask, &path).unwrap();
        assert_eq!(image::open(&path).unwrap().to_luma8(), mask);

        let bad = dir.path().join("nope").join("mask.png");
        let message = save_png_atomic(&mask, &bad).unwrap_err().to_string();
        assert!(message.contains("nope"), "{message}");

        let empty = GrayImage::new(0, 4);
        assert!(matches!(
            save_png_atomic(&empty, &path),
            Err(PlotError::EmptyImage {
                width: 0,
                height: 4
            })
        ));
    }
}
