//! The crate's one error type. Every variant says what went wrong in terms a user can act on:
//! the tensor or field by name, and the expected and found values.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in this crate. Nothing here panics on bad user input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `config.json` is not valid JSON or a field has the wrong type.
    #[error("config {path}: {message}")]
    ConfigParse { path: String, message: String },
    /// A config field holds a value the model cannot run with.
    #[error("config field `{field}`: {message}")]
    ConfigInvalid { field: String, message: String },
    /// A tensor is absent from the checkpoint.
    #[error("tensor `{name}` is missing from the checkpoint (expected shape {expected:?})")]
    MissingTensor { name: String, expected: Vec<usize> },
    /// A tensor has the wrong shape.
    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor has a dtype this crate cannot convert.
    #[error("tensor `{name}`: unsupported dtype {dtype} (supported: {supported})")]
    UnsupportedDtype {
        name: String,
        dtype: String,
        supported: String,
    },
    /// A safetensors file (or its index) is truncated or corrupt.
    #[error("safetensors {path}: {message}")]
    Safetensors { path: PathBuf, message: String },
    /// Bad arguments to an op or to the model (token out of range, empty batch, ...).
    #[error("{0}")]
    InvalidInput(String),
    /// A tokenizer could not be loaded or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An error from the CUDA driver, a kernel launch or a library (cuBLASLt).
    #[error("cuda: {0}")]
    Cuda(String),
}

impl Error {
    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }
}
