//! Small self-contained raster plotting for training dashboards.
//!
//! Everything renders into an RGB [`Canvas`] with a built-in 5×7 bitmap [`font`], so
//! plots need no system fonts and look identical on every machine. PNGs are written
//! atomically (temp file + rename) so a reader polling a run directory never sees a
//! half-written image.

pub mod bar;
pub mod canvas;
pub mod color;
pub mod error;
pub mod font;
pub mod heatmap;
pub mod io;
mod layout;
pub mod line;
pub mod ticks;

pub use bar::BarChart;
pub use canvas::Canvas;
pub use color::Color;
pub use error::PlotError;
pub use heatmap::Heatmap;
pub use line::{LinePlot, Series};
pub use ticks::Ticks;
