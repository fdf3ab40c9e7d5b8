use std::path::PathBuf;
use std::sync::Arc;

use crate::edit::FieldError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What failed. Callers tell failures apart by variant (the server maps each to its status
/// code), never by message text. `Clone`, so one failure of a batch's shared work (the
/// model's forward) can be given to every job of the batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("could not decode the image: {0}")]
    Decode(String),
    /// An image format cutout recognises but does not decode.
    #[error("{0} images are not supported (use JPEG, PNG or WebP)")]
    UnsupportedFormat(&'static str),
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
    /// A value cutout was given by its own caller or environment that it cannot use (a
    /// setting, a size, a layer that does not match): not a request's parameter.
    #[error("invalid value: {0}")]
    InvalidArgument(String),
    /// A parameter of the edit that does not work for this image, named as the request
    /// spelled it (known only once the image is decoded or the subject found).
    #[error("{0}")]
    InvalidParameter(FieldError),
    /// The region of interest does not fit the image (known only once it is decoded).
    #[error("roi: the region of interest {0}")]
    InvalidRoi(&'static str),
    /// The GPU device was lost (driver reset, GPU removed, a timeout): the work did not
    /// finish and the device must be opened again.
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    /// The device could not allocate the memory this work needs.
    #[error("the GPU is out of memory: {0}")]
    OutOfMemory(String),
    /// The device refused work cutout gave it: a bug in cutout, not in the request.
    #[error("the GPU refused the work: {0}")]
    Device(String),
    /// The renderer panicked on this job's batch (a bug in cutout); the worker carried on.
    #[error("the renderer failed unexpectedly: {0}")]
    Panicked(String),
    #[error(transparent)]
    Io(Arc<std::io::Error>),
}

impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Self {
        Self::Io(Arc::new(error))
    }
}

impl From<wgpu::Error> for Error {
    fn from(error: wgpu::Error) -> Self {
        match error {
            wgpu::Error::OutOfMemory { .. } => Self::OutOfMemory(error.to_string()),
            other => Self::Device(other.to_string()),
        }
    }
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
