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
    #[error("model download failed: {0}")]
    Download(String),
    #[error("no usable GPU adapter: {0}")]
    NoAdapter(String),
    #[error("invalid value: {0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
