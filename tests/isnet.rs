//! IS-Net (isnet-general-use) against onnxruntime.
//!
//! The real weights are not in the repository, so the fixture is the graph of a real IS-Net
//! export with seeded random weights at 1/16 of its channel widths, and onnxruntime's output
//! for it (fixtures/make_isnet_fixture.py). With the full export at hand, the ignored test
//! below checks the real weights the same way.

use burn::tensor::Device;
use cutout_core::model::{self, Session};
use cutout_tests::*;

const SIDE: usize = 1024;

fn tiny_isnet(device: &Device) -> Session {
    let spec = model::spec("isnet-general-use").unwrap();
    let bytes = std::fs::read(fixture("isnet/isnet-tiny.onnx")).unwrap();
    Session::from_onnx(spec, &bytes, device).unwrap()
}

/// `test_input` of make_isnet_fixture.py: image `n` of smooth patterns, NCHW.
fn pattern(n: usize, height: usize, width: usize) -> Vec<f32> {
    let mut values = Vec::with_capacity(3 * height * width);
    for c in 0..3 {
        let fx = (0.031 + 0.01 * c as f64 + 0.004 * n as f64) as f32;
        let fy = (0.023 + 0.007 * c as f64) as f32;
        let amplitude = (0.9 - 0.2 * n as f64) as f32;
        let offset = (0.1 * c as f64) as f32;
        for y in 0..height {
            for x in 0..width {
                values.push((x as f32 * fx).sin() * (y as f32 * fy).cos() * amplitude + offset);
            }
        }
    }
    values
}

#[test]
fn tiny_isnet_matches_onnxruntime() {
    let session = tiny_isnet(&Device::flex());
    let input: Vec<f32> = (0..2).flat_map(|n| pattern(n, SIDE, SIDE)).collect();
    let output = session.predict(input, 2, [SIDE, SIDE]).unwrap();

    // The fixture keeps every odd row and column of each output, the two stacked.
    let reference = image::open(fixture("isnet/isnet-tiny.out.png"))
        .unwrap()
        .into_luma16();
    let half = SIDE / 2;
    assert_eq!(reference.dimensions(), (half as u32, 2 * half as u32));
    for (n, ours) in output.chunks_exact(SIDE * SIDE).enumerate() {
        let sampled: Vec<f32> = (0..half * half)
            .map(|i| ours[(2 * (i / half) + 1) * SIDE + 2 * (i % half) + 1])
            .collect();
        let expected: Vec<f32> = (0..half * half)
            .map(|i| {
                reference
                    .get_pixel((i % half) as u32, (n * half + i / half) as u32)
                    .0[0]
            })
            .map(|v| v as f32 / 65535.0)
            .collect();
        let err = max_abs_diff(&sampled, &expected);
        println!("image {n}: max abs error vs onnxruntime {err:.2e}");
        assert!(err <= 1e-3, "image {n}: max abs error {err}");
    }
}

#[test]
fn isnet_on_wgpu_agrees_with_cpu_backend() {
    // IS-Net takes any size; 96x80 keeps the software adapter quick while every stage still
    // pools (the stride-2 stem halves it first).
    let err = flex_vs_wgpu(tiny_isnet, pattern(0, 96, 80), [96, 80]);
    assert!(err <= 1e-4, "wgpu and flex disagree by {err}");
}

#[test]
fn a_u2net_file_is_refused_as_isnet() {
    let spec = model::spec("isnet-general-use").unwrap();
    let u2netp = std::fs::read(fixture("../../models/u2netp.onnx")).unwrap();
    let err = Session::from_onnx(spec, &u2netp, &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("convolution #0") && err.contains("stride 2"),
        "{err}"
    );
}

/// The whole isnet-general-use export against onnxruntime on a photo. Needs the files
/// `make_isnet_fixture.py EXPORT --full DIR` writes:
/// `CUTOUT_ISNET_FULL=DIR cargo test --workspace --test isnet -- --ignored`.
#[test]
#[ignore = "needs the full IS-Net export (CUTOUT_ISNET_FULL)"]
fn isnet_full_weights_match_onnxruntime() {
    let dir = std::path::PathBuf::from(std::env::var("CUTOUT_ISNET_FULL").unwrap());
    let floats = |name: &str| -> Vec<f32> {
        std::fs::read(dir.join(name))
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let spec = model::spec("isnet-general-use").unwrap();
    let bytes = std::fs::read(dir.join("isnet.onnx")).unwrap();
    let session = Session::from_onnx(spec, &bytes, &Device::flex()).unwrap();
    let start = std::time::Instant::now();
    let ours = session
        .predict(floats("input.f32"), 1, [SIDE, SIDE])
        .unwrap();
    let elapsed = start.elapsed();
    let reference = floats("output.f32");
    let err = max_abs_diff(&ours, &reference);
    let (mae, iou) = (mean_abs_diff(&ours, &reference), iou(&ours, &reference));
    println!(
        "full IS-Net: max abs error {err:.2e}, mean {mae:.2e}, IoU {iou:.5}, forward {elapsed:?}"
    );
    assert!(err <= 1e-3, "max abs error {err}");
}

/// The whole removal (decode, WGSL resize and normalise at 1024², forward, mask back to full
/// size) against `rembg i -m isnet-general-use -om` with the same export, as for u2netp in
/// fidelity.rs. Same files as above.
#[test]
#[ignore = "needs the full IS-Net export (CUTOUT_ISNET_FULL)"]
fn isnet_full_size_mask_matches_rembg() {
    let dir = std::path::PathBuf::from(std::env::var("CUTOUT_ISNET_FULL").unwrap());
    let spec = model::spec("isnet-general-use").unwrap();
    let bytes = std::fs::read(dir.join("isnet.onnx")).unwrap();
    let session = Session::from_onnx(spec, &bytes, &Device::flex()).unwrap();
    let editor = cutout_core::edit::Editor::new(cutout_core::remove::Remover::new(gpu(), session));
    let (mae, iou) = mask_vs_rembg(
        &editor,
        &fixture("images/astronaut.jpg"),
        &dir.join("rembg-mask.png"),
    );
    println!(
        "full IS-Net mask: mean abs error {:.3}/255, IoU {iou:.4}",
        mae * 255.0
    );
    assert!(mae <= 2.0 / 255.0, "mean abs error {}/255", mae * 255.0);
    assert!(iou >= 0.98, "IoU {iou}");
}
