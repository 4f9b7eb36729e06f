//! The crate's error type. Messages name the file and, for LLaVA records, the record's
//! position and id, so a broken line in a large dataset can be found directly.

use std::fmt;
use std::path::PathBuf;

use crate::mask::MaskError;
use crate::shapes::ShapesConfigError;

/// Identifies a record inside a LLaVA JSON file: its index and, when it has one, its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordRef {
    pub index: usize,
    pub id: Option<String>,
}

impl fmt::Display for RecordRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "record {} (id {id:?})", self.index),
            None => write!(f, "record {}", self.index),
        }
    }
}

/// Which of a record's files an image error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImagePart {
    Image,
    Mask,
}

impl fmt::Display for ImagePart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImagePart::Image => "image",
            ImagePart::Mask => "mask",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("{0}")]
    Template(String),

    #[error(transparent)]
    Config(#[from] ShapesConfigError),

    #[error(transparent)]
    Mask(#[from] MaskError),

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: malformed JSON at line {line}, column {column}: {message}", path.display())]
    Json {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },

    #[error("{}: {record}: {reason}", path.display())]
    InvalidRecord {
        path: PathBuf,
        record: RecordRef,
        reason: String,
    },

    #[error("{}: {record}: missing \"conversations\"", path.display())]
    MissingConversations { path: PathBuf, record: RecordRef },

    #[error("{}: {record}: turn {turn} has unknown \"from\" {role:?} (expected \"human\" or \"gpt\")", path.display())]
    UnknownRole {
        path: PathBuf,
        record: RecordRef,
        turn: usize,
        role: String,
    },

    /// The record's image (or mask: `what`) is not there.
    #[error("{}: {record}: {what} {} does not exist", path.display(), image.display())]
    ImageNotFound {
        path: PathBuf,
        record: RecordRef,
        what: ImagePart,
        image: PathBuf,
    },

    #[error("{}: {record}: {}: corrupt {what}: {reason}", path.display(), image.display())]
    CorruptImage {
        path: PathBuf,
        record: RecordRef,
        what: ImagePart,
        image: PathBuf,
        reason: String,
    },

    #[error(
        "{}: {record}: mask {} is {}x{} but image {} is {}x{}",
        path.display(), mask.display(), mask_size.0, mask_size.1,
        image.display(), image_size.0, image_size.1
    )]
    MaskSizeMismatch {
        path: PathBuf,
        record: RecordRef,
        mask: PathBuf,
        mask_size: (u32, u32),
        image: PathBuf,
        image_size: (u32, u32),
    },

    #[error("{}: {record}: has a \"mask\" but no \"image\"", path.display())]
    MaskWithoutImage { path: PathBuf, record: RecordRef },

    /// An example the model cannot take (its text is too long for the model,
    /// its placeholders do not match its image): skipped when training.
    #[error("example {example}: {reason}")]
    Unusable { example: String, reason: String },

    #[error("index {index} is out of range for a dataset of {len} examples")]
    IndexOutOfRange { index: usize, len: usize },

    #[error(transparent)]
    Plot(#[from] vlmkit_plot::PlotError),
}

impl DataError {
    /// Whether this is a problem of one record or example (its image missing or
    /// undecodable, its mask, its text, its placeholders) rather than of the data
    /// as a whole: training skips such a record and counts it.
    pub fn is_record_problem(&self) -> bool {
        matches!(
            self,
            DataError::ImageNotFound { .. }
                | DataError::CorruptImage { .. }
                | DataError::MaskSizeMismatch { .. }
                | DataError::MaskWithoutImage { .. }
                | DataError::InvalidRecord { .. }
                | DataError::MissingConversations { .. }
                | DataError::UnknownRole { .. }
                | DataError::Json { .. }
                | DataError::Template(_)
                | DataError::Tokenizer(_)
                | DataError::Mask(_)
                | DataError::Unusable { .. }
        )
    }
}
