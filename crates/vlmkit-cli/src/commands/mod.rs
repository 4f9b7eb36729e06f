pub mod bench;
pub mod connector;
pub mod data;
pub mod eval;
pub mod infer;
pub mod params;
pub mod recipe;
pub mod train;
