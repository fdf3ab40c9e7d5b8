use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not decode the image: {0}")]
    Decode(String),
    #[error("the image is too large: {0}")]
    TooLarge(String),
    #[error("could not encode the image: {0}")]
    Encode(String),
    #[error("the model file does not fit: {0}")]
    InvalidModel(String),
    #[error("{file}: tensor '{tensor}' {problem}")]
    ModelTensor {
        file: String,
        tensor: String,
        problem: TensorProblem,
    },
    #[error("unknown model '{0}' (known: {1})")]
    UnknownModel(String, String),
    #[error(
        "model '{name}' is not present: looked in {searched:?}; put {file} there, set CUTOUT_MODELS, or allow the download"
    )]
    ModelMissing {
        name: String,
        file: String,
        searched: Vec<PathBuf>,
    },
    #[error("{file}: {kind} is {found}, expected {expected} (the download was removed)")]
    ChecksumMismatch {
        file: String,
        kind: &'static str,
        found: String,
        expected: String,
    },
    #[error("model download failed: {0}")]
    Download(String),
    #[error("no usable GPU adapter: {0}")]
    NoAdapter(String),
    #[error("invalid value: {0}")]
    InvalidArgument(String),
    /// The region of interest does not fit the image (known only once it is decoded).
    #[error("roi: the region of interest {0}")]
    InvalidRoi(&'static str),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What is wrong with one tensor of a model file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorProblem {
    #[error("is missing")]
    Missing,
    #[error("is not part of this architecture")]
    Unexpected,
    #[error("has shape {found:?}, expected {expected:?}")]
    Shape {
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("has element type {0}, expected floats")]
    DType(String),
    #[error("cannot be read: {0}")]
    Unreadable(String),
    #[error("does not match the architecture's values: {0}")]
    Values(String),
}
