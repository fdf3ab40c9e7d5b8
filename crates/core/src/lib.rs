//! cutout's engine: decoding, the GPU context, segmentation models and image operations.
//! Knows nothing about HTTP or command lines.

pub mod alloc;
pub mod backend;
pub mod decode;
pub mod edit;
pub mod encode;
pub mod error;
pub mod gpu;
pub mod model;
pub mod ops;
pub mod remove;
pub mod timing;

pub use error::{Error, Result};
