//! Shared helpers for cutout's integration tests: fixture paths, one device per test binary,
//! and the comparison metrics the tests assert on.

use std::path::PathBuf;
use std::sync::OnceLock;

use cutout_core::gpu::{DevicePreference, Gpu};

pub const PHOTOS: [&str; 4] = ["chelsea", "coffee", "astronaut", "rocket"];

pub fn fixture(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(relative)
}

/// The software fallback adapter, so tests behave the same with or without a GPU.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new(DevicePreference::Cpu).expect("software adapter (lavapipe)"))
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn mean_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
}

/// Intersection over union of the two masks thresholded at 0.5.
pub fn iou(a: &[f32], b: &[f32]) -> f32 {
    let (mut both, mut either) = (0usize, 0usize);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (*x >= 0.5, *y >= 0.5);
        both += (x && y) as usize;
        either += (x || y) as usize;
    }
    if either == 0 {
        1.0
    } else {
        both as f32 / either as f32
    }
}

/// rembg's model input computed on the CPU from an RGB image: scale by the image maximum,
/// then (x - mean) / std, planar.
pub fn reference_normalize(rgb: &image::RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let max = rgb.as_raw().iter().copied().max().unwrap_or(0).max(1) as f32;
    let count = (rgb.width() * rgb.height()) as usize;
    let mut planes = vec![0.0; 3 * count];
    for (i, pixel) in rgb.pixels().enumerate() {
        for c in 0..3 {
            planes[c * count + i] = (pixel.0[c] as f32 / max - mean[c]) / std[c];
        }
    }
    planes
}
