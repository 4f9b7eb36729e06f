//! Errors of the core.

/// A hidden-state index as a recipe writes it (negative from the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerIndex(pub i64);

impl std::fmt::Display for LayerIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hs[{}]", self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error("{what}: expected shape {expected:?}, got {got:?}")]
    Shape {
        what: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    #[error("{index} is out of range for an encoder with {depth} blocks (valid: hs[0] ..= hs[{depth}], or -1 ..= -{})", depth + 1)]
    LayerOutOfRange { index: LayerIndex, depth: usize },

    #[error("{index} (= hs[{absolute}]) is not among the selected vision layers {selected:?}")]
    LayerNotSelected {
        index: LayerIndex,
        absolute: usize,
        selected: Vec<usize>,
    },

    #[error("{0}")]
    Invalid(String),

    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(c) => c,
            other => candle_core::Error::Msg(other.to_string()),
        }
    }
}

/// `From` impls that box an error into a variant of a library's own error type
/// (located diagnostics are large: boxed, a fallible call does not pay for them):
///
/// ```ignore
/// vlmkit_core::from_boxed!(TrainError {
///     Recipe: vlmkit_recipe::RecipeError,
///     Data: vlmkit_data::DataError,
/// });
/// ```
#[macro_export]
macro_rules! from_boxed {
    ($error:ident { $($variant:ident: $source:ty),+ $(,)? }) => {
        $(
            impl From<$source> for $error {
                fn from(error: $source) -> Self {
                    $error::$variant(Box::new(error))
                }
            }
        )+
    };
}
