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

/// The largest difference between one model's forward on burn's CPU backend and on its wgpu
/// backend (the software adapter), for one image of `size`.
pub fn flex_vs_wgpu(
    session_on: impl Fn(&burn::tensor::Device) -> cutout_core::model::Session,
    input: Vec<f32>,
    size: [usize; 2],
) -> f32 {
    let cpu = session_on(&burn::tensor::Device::flex())
        .predict(input.clone(), 1, size)
        .unwrap();
    let wgpu = session_on(&gpu().burn_device)
        .predict(input, 1, size)
        .unwrap();
    let err = max_abs_diff(&cpu, &wgpu);
    println!("wgpu vs flex max abs difference {err:.2e}");
    err
}

/// `edit` of `image`, rendered by `editor` alone in its batch.
pub fn render(
    editor: &cutout_core::edit::Editor,
    image: &image::RgbaImage,
    edit: cutout_core::edit::Edit,
) -> image::RgbaImage {
    render_output(editor, image, edit).image
}

/// [`render`], with the subject's placement and the rest of the output.
pub fn render_output(
    editor: &cutout_core::edit::Editor,
    image: &image::RgbaImage,
    edit: cutout_core::edit::Edit,
) -> cutout_core::edit::EditOutput {
    let job = cutout_core::edit::Job {
        image: image.clone(),
        background: None,
        edit,
    };
    let mut outputs = editor.render(std::slice::from_ref(&job));
    outputs.remove(0).unwrap()
}

/// rembg's own output: the model's mask upsampled (no refinement), as a grey image.
pub fn rembg_mask_edit() -> cutout_core::edit::Edit {
    cutout_core::edit::Edit {
        refine: false,
        channels: cutout_core::edit::Channels::Alpha,
        ..Default::default()
    }
}

/// The full-size mask `editor` makes for the photo at `photo` against rembg's for it
/// (`rembg i -om`): mean abs error (0..1) and IoU at 0.5.
pub fn mask_vs_rembg(
    editor: &cutout_core::edit::Editor,
    photo: &std::path::Path,
    rembg_mask: &std::path::Path,
) -> (f32, f32) {
    let bytes = std::fs::read(photo).unwrap();
    let image = cutout_core::decode::decode(&bytes, Default::default()).unwrap();
    let mask = render(editor, &image, rembg_mask_edit());
    let ours: Vec<f32> = mask.pixels().map(|p| p.0[0] as f32 / 255.0).collect();
    let reference: Vec<f32> = image::open(rembg_mask)
        .unwrap()
        .into_luma8()
        .pixels()
        .map(|p| p.0[0] as f32 / 255.0)
        .collect();
    (mean_abs_diff(&ours, &reference), iou(&ours, &reference))
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
