//! Errors returned by plotting and PNG writing.

use std::path::PathBuf;

/// Everything that can go wrong while rendering or saving a plot.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The image could not be encoded as PNG.
    #[error("{}: PNG encoding failed: {source}", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// A PNG needs at least one pixel in each direction.
    #[error("cannot save a {width}x{height} image: both sides must be at least 1 pixel")]
    EmptyImage { width: u32, height: u32 },
    /// Heatmap values do not match the declared grid.
    #[error("heatmap grid is {rows}x{cols} = {expected} cells but {actual} values were given")]
    GridMismatch {
        rows: usize,
        cols: usize,
        expected: usize,
        actual: usize,
    },
}
