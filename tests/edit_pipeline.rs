//! The whole edit pipeline on a real photo with the embedded model.

use cutout_core::decode::{DecodeLimits, decode};
use cutout_core::edit::{Editor, Job, photoroom};
use cutout_core::encode::encode_result;
use cutout_tests::*;

fn edit(pairs: &[(&str, &str)]) -> cutout_core::edit::Edit {
    photoroom::parse_v2_edit(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
    .unwrap()
}

#[test]
fn ecommerce_edit_lands_inside_the_padding_deterministically() {
    let editor = Editor::load(gpu(), "u2netp", false).unwrap();
    let bytes = std::fs::read(fixture("images/coffee.jpg")).unwrap();
    let image = decode(&bytes, DecodeLimits::default()).unwrap();
    let job = || Job {
        image: image.clone(),
        background: None,
        edit: edit(&[
            ("background.color", "FFFFFF"),
            ("shadow.mode", "ai.soft"),
            ("outputSize", "400x400"),
            ("padding", "0.1"),
        ]),
    };
    let mut results = editor.render(&[job(), job()]);
    let second = results.pop().unwrap().unwrap();
    let first = results.pop().unwrap().unwrap();
    assert_eq!(first.image.dimensions(), (400, 400));
    assert_eq!(first.image.as_raw(), second.image.as_raw(), "deterministic");
    assert!(
        first.image.pixels().all(|p| p.0[3] == 255),
        "white background is opaque"
    );
    assert_eq!(first.image.get_pixel(2, 2).0, [255, 255, 255, 255]);

    let [left, top, width, height] = first.foreground.unwrap();
    println!(
        "foreground box {left},{top} {width}x{height}; uncertainty {:?}",
        first.uncertainty
    );
    // The subject fits the 320x320 target area (40 px padding) on at least one axis exactly,
    // unless a cropped side snapped it to the canvas edge.
    assert!(left >= 39 || top >= 39);
    assert!(width.max(height) >= 318 && width.max(height) <= 401);
    let score = first.uncertainty.unwrap();
    assert!((0.0..=1.0).contains(&score));

    let encoded = encode_result(
        &first.image,
        job().edit.format,
        job().edit.channels,
        Some(300),
    )
    .unwrap();
    assert_eq!(encoded.mime, "image/png");
    let decoded = image::load_from_memory(&encoded.bytes).unwrap();
    assert_eq!(decoded.width(), 400);
}

/// The e-commerce layout against a CPU reference built from the documented rules: the
/// subject's box (alpha ≥ 5 % of the plain cut-out) scaled to fit the 320×320 area inside
/// 10 % padding of a 400×400 canvas and centred, sampled bilinearly from the photo with the
/// cut-out's alpha, over white. Snapping to cropped sides is off, so the padding holds on
/// every side.
#[test]
fn ecommerce_layout_matches_a_cpu_reference_of_the_documented_placement() {
    let editor = Editor::load(gpu(), "u2netp", false).unwrap();
    let photo = decode(
        &std::fs::read(fixture("images/chelsea.jpg")).unwrap(),
        DecodeLimits::default(),
    )
    .unwrap();
    let cutout = render(&editor, &photo, edit(&[("referenceBox", "originalImage")]));
    let placed = render_output(
        &editor,
        &photo,
        edit(&[
            ("background.color", "FFFFFF"),
            ("outputSize", "400x400"),
            ("padding", "0.1"),
            ("ignorePaddingAndSnapOnCroppedSides", "false"),
        ]),
    );
    assert_eq!(placed.image.dimensions(), (400, 400));

    // The subject's box on the CPU, in pixel edges.
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, p) in cutout.enumerate_pixels() {
        if p.0[3] as f32 >= 0.05 * 255.0 {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
        }
    }
    let (bw, bh) = ((x1 - x0) as f64, (y1 - y0) as f64);
    let scale = (320.0 / bw).min(320.0 / bh);
    let (width, height) = (bw * scale, bh * scale);
    let (left, top) = (40.0 + (320.0 - width) / 2.0, 40.0 + (320.0 - height) / 2.0);
    let [got_left, got_top, got_width, got_height] = placed.foreground.unwrap();
    println!(
        "subject {x0},{y0}..{x1},{y1}; expected box {left:.1},{top:.1} {width:.1}x{height:.1}, \
         got {got_left},{got_top} {got_width}x{got_height}"
    );
    for (got, expected) in [
        (got_left, left),
        (got_top, top),
        (got_width, width),
        (got_height, height),
    ] {
        assert!(
            (got as f64 - expected).abs() <= 2.0,
            "box {got} vs {expected:.1}"
        );
    }

    // Every canvas pixel: the photo sampled at its centre, weighted by the cut-out's alpha.
    let sample = |sx: f64, sy: f64| -> [f64; 4] {
        let (fx, fy) = (sx.floor(), sy.floor());
        let (tx, ty) = (sx - fx, sy - fy);
        let mut premultiplied = [0.0; 4];
        for (dx, dy, w) in [
            (0, 0, (1.0 - tx) * (1.0 - ty)),
            (1, 0, tx * (1.0 - ty)),
            (0, 1, (1.0 - tx) * ty),
            (1, 1, tx * ty),
        ] {
            let clamp = |v: f64, n: u32| (v as i64).clamp(0, n as i64 - 1) as u32;
            let (px, py) = (
                clamp(fx + dx as f64, photo.width()),
                clamp(fy + dy as f64, photo.height()),
            );
            let alpha = cutout.get_pixel(px, py).0[3] as f64 / 255.0;
            let rgb = photo.get_pixel(px, py).0;
            for c in 0..3 {
                premultiplied[c] += w * alpha * rgb[c] as f64;
            }
            premultiplied[3] += w * alpha;
        }
        premultiplied
    };
    let (mut total, mut worst) = (0.0, 0.0f64);
    for (x, y, p) in placed.image.enumerate_pixels() {
        let sx = (x as f64 + 0.5 - left) / scale + x0 as f64 - 0.5;
        let sy = (y as f64 + 0.5 - top) / scale + y0 as f64 - 0.5;
        let inside = (-0.5..=photo.width() as f64 - 0.5).contains(&sx)
            && (-0.5..=photo.height() as f64 - 0.5).contains(&sy);
        let [r, g, b, a] = if inside { sample(sx, sy) } else { [0.0; 4] };
        let expected = [r, g, b].map(|c| c + 255.0 * (1.0 - a));
        let diff: f64 = (0..3)
            .map(|c| (p.0[c] as f64 - expected[c]).abs())
            .sum::<f64>()
            / 3.0;
        assert_eq!(p.0[3], 255, "({x},{y}) is opaque over white");
        total += diff;
        worst = worst.max(diff);
    }
    let mean = total / (400.0 * 400.0);
    println!("mean difference {mean:.3}/255, worst pixel {worst:.1}/255");
    assert!(
        mean <= 1.0,
        "mean difference {mean:.3}/255 from the CPU reference"
    );
}

#[test]
fn outline_and_transparent_background() {
    let editor = Editor::load(gpu(), "u2netp", false).unwrap();
    let bytes = std::fs::read(fixture("images/chelsea.jpg")).unwrap();
    let image = decode(&bytes, DecodeLimits::default()).unwrap();
    let job = Job {
        image,
        background: None,
        edit: edit(&[("outline.color", "FF0000"), ("outline.width", "0.02")]),
    };
    let result = editor.render(&[job]).pop().unwrap().unwrap();
    let red_rim = result
        .image
        .pixels()
        .filter(|p| p.0[0] > 200 && p.0[1] < 80 && p.0[2] < 80 && p.0[3] == 255)
        .count();
    let transparent = result.image.pixels().filter(|p| p.0[3] == 0).count();
    assert!(
        red_rim > 1000,
        "an outline was drawn ({red_rim} red pixels)"
    );
    assert!(transparent > 1000, "the background is transparent");
}

#[test]
fn keep_existing_alpha_uses_the_images_own_alpha() {
    let editor = Editor::load(gpu(), "u2netp", false).unwrap();
    let image = image::open(fixture("matting/fg-cherries.png"))
        .unwrap()
        .into_rgba8();
    let render = |pairs: &[(&str, &str)]| render(&editor, &image, edit(pairs));
    // referenceBox=originalImage keeps the frame where it was (no re-centring on the subject).
    let kept = render(&[
        ("keepExistingAlphaChannel", "auto"),
        ("referenceBox", "originalImage"),
    ]);
    assert_eq!(kept.dimensions(), image.dimensions());
    let worst = kept
        .pixels()
        .zip(image.pixels())
        .map(|(k, i)| k.0[3].abs_diff(i.0[3]))
        .max()
        .unwrap();
    assert!(worst <= 1, "alpha differs from the input's by {worst}");

    let segmented = render(&[("referenceBox", "originalImage")]);
    let differing = segmented
        .pixels()
        .zip(image.pixels())
        .filter(|(s, i)| s.0[3].abs_diff(i.0[3]) > 8)
        .count();
    assert!(differing > 100, "without it the model's mask is used");
}

#[test]
fn watermark_is_the_documented_stripes_over_the_result() {
    let editor = Editor::load(gpu(), "u2netp", false).unwrap();
    let bytes = std::fs::read(fixture("images/coffee.jpg")).unwrap();
    let image = decode(&bytes, DecodeLimits::default()).unwrap();
    let render = |watermark: bool| {
        let mut edit = edit(&[("background.color", "000000")]);
        edit.watermark = watermark;
        let job = Job {
            image: image.clone(),
            background: None,
            edit,
        };
        editor.render(&[job]).pop().unwrap().unwrap().image
    };
    let (plain, marked) = (render(false), render(true));
    // CPU reference: white at 35 % over the picture on diagonal bands 24 px wide every 96.
    let mut striped = 0;
    for (x, y, p) in plain.enumerate_pixels() {
        let m = marked.get_pixel(x, y).0;
        let on_band = (x + y) % 96 < 24;
        for (c, (&got, &under)) in m.iter().zip(&p.0).take(3).enumerate() {
            let expected = if on_band {
                0.35 * 255.0 + 0.65 * under as f32
            } else {
                under as f32
            };
            assert!(
                (got as f32 - expected).abs() <= 1.0,
                "({x},{y}) channel {c}: {got} vs {expected}"
            );
        }
        striped += on_band as usize;
    }
    let pixels = (plain.width() * plain.height()) as usize;
    assert!(
        striped * 5 > pixels,
        "about a quarter of the picture is striped"
    );
}

/// The device work of an e-commerce edit (cut-out, white background, padding, soft shadow)
/// for a batch of 4, with every operation on the device and the model on burn's wgpu
/// backend: one submission for the batch's model input (burn's forward reads it), one for
/// the masks, refinement and subject boxes with the boxes' readback, one for the effects
/// with the results' readback. Before the batch's jobs passed each stage together it took
/// three submissions and two readbacks per image. With the model on the CPU, one more: the
/// batch's input planes (once per batch, not per image).
#[test]
fn an_ecommerce_batch_submits_per_stage_not_per_operation() {
    use cutout_core::model::{self, Session};

    let spec = model::spec("u2netp").unwrap();
    let bytes = model::load_bytes(spec, false).unwrap();
    let on_wgpu = Session::from_onnx(spec, &bytes, &gpu().burn_device).unwrap();
    assert!(on_wgpu.shares_buffers(), "the model on burn's wgpu backend");
    let (submits, readbacks, bytes_back) = ecommerce_batch_of_4(on_wgpu);
    // The model's input before burn's forward; the subjects' boxes (the layout needs them
    // on the host); the results.
    assert_eq!(submits, 3, "one per stage, not per image");
    assert_eq!(readbacks, 2, "the boxes, then the results");
    assert_eq!(
        bytes_back,
        4 * (24 + 400 * 400 * 4),
        "each box's six counters and each result's pixels, nothing else"
    );

    // The model on burn's CPU backend with the operations on the device: one hand-off more,
    // the batch's input planes read back at once (the masks go up without a submission).
    let on_flex = Session::from_onnx(spec, &bytes, &burn::tensor::Device::flex()).unwrap();
    assert!(!on_flex.shares_buffers());
    let (submits, readbacks, bytes_back) = ecommerce_batch_of_4(on_flex);
    assert_eq!(submits, 3, "the input's readback, the boxes', the results'");
    assert_eq!(readbacks, 3, "the model input, the boxes, the results");
    assert_eq!(bytes_back, 4 * (3 * 320 * 320 * 4 + 24 + 400 * 400 * 4));
}

/// Renders the e-commerce edit for a batch of 4 copies of a photo with `session` and every
/// operation on the device: cutout's own submits, readbacks and bytes read back.
fn ecommerce_batch_of_4(session: cutout_core::model::Session) -> (u64, u64, u64) {
    use cutout_core::ops::ImageOps;
    use cutout_core::remove::Remover;

    let remover = Remover::with_ops(ImageOps::with_host_ops(gpu(), false), session);
    let editor = Editor::new(remover);
    let photo = decode(
        &std::fs::read(fixture("images/coffee.jpg")).unwrap(),
        DecodeLimits::default(),
    )
    .unwrap();
    let job = || Job {
        image: photo.clone(),
        background: None,
        edit: edit(&[
            ("background.color", "FFFFFF"),
            ("shadow.mode", "ai.soft"),
            ("outputSize", "400x400"),
            ("padding", "0.1"),
        ]),
    };
    let jobs: Vec<Job> = (0..4).map(|_| job()).collect();
    let before = editor.ops().counters();
    let results = editor.render(&jobs);
    let after = editor.ops().counters();
    for result in &results {
        assert_eq!(result.as_ref().unwrap().image.dimensions(), (400, 400));
    }
    let counts = (
        after.submits - before.submits,
        after.readbacks - before.readbacks,
        after.bytes_read_back - before.bytes_read_back,
    );
    println!(
        "batch of 4: {} submits, {} readbacks, {} bytes up, {} bytes back",
        counts.0,
        counts.1,
        after.bytes_uploaded - before.bytes_uploaded,
        counts.2
    );
    counts
}

/// An editor for u2netp on burn's wgpu backend, with the image operations on the host
/// (`ops::cpu`) or on the device.
fn editor_with_ops_on_host(on_host: bool) -> Editor {
    use cutout_core::model::{self, Session};
    use cutout_core::ops::ImageOps;
    use cutout_core::remove::Remover;

    let spec = model::spec("u2netp").unwrap();
    let bytes = model::load_bytes(spec, false).unwrap();
    let session = Session::from_onnx(spec, &bytes, &gpu().burn_device).unwrap();
    Editor::new(Remover::with_ops(
        ImageOps::with_host_ops(gpu(), on_host),
        session,
    ))
}

/// A cut-out on white with despill, of a photo whose background is blue (and its subject
/// tinted blue by it), once with the
/// operations on the host and once on the device, where the background colour is measured
/// and consumed by shaders: the results agree (each CPU operation is tested against its
/// shader to 1/255 on its own), and despill changed the subject on both.
#[test]
fn despill_on_the_device_matches_the_host_pipeline() {
    let photo = decode(
        &std::fs::read(fixture("images/coffee.jpg")).unwrap(),
        DecodeLimits::default(),
    )
    .unwrap();
    let mask = image::open(fixture("images/coffee.rembg-mask.png"))
        .unwrap()
        .to_luma8();
    let mut blue = photo.clone();
    for (pixel, m) in blue.pixels_mut().zip(mask.pixels()) {
        if m.0[0] < 13 {
            pixel.0 = [20, 60, 220, 255];
        } else {
            // The blue the subject picked up from it.
            pixel.0[2] = pixel.0[2].saturating_add(60);
        }
    }
    // PhotoRoom documents `despill` on /v1/segment.
    let edit_with = |despill: &str| {
        photoroom::parse_v1_segment(vec![
            ("bg_color".into(), "FFFFFF".into()),
            ("despill".into(), despill.into()),
        ])
        .unwrap()
    };
    let render = |editor: &Editor, despill: &str| {
        let job = Job {
            image: blue.clone(),
            background: None,
            edit: edit_with(despill),
        };
        editor.render(&[job]).pop().unwrap().unwrap().image
    };
    let (host, device) = (
        editor_with_ops_on_host(true),
        editor_with_ops_on_host(false),
    );
    let mean_difference = |a: &image::RgbaImage, b: &image::RgbaImage| {
        let total: u64 = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| x.abs_diff(*y) as u64)
            .sum();
        total as f64 / a.as_raw().len() as f64
    };
    let on_host = render(&host, "true");
    let on_device = render(&device, "true");
    let difference = mean_difference(&on_host, &on_device);
    println!("host and device pipelines differ by {difference:.3}/255 on average");
    assert!(difference <= 0.5, "{difference:.3}/255");
    let plain = render(&device, "false");

    let removed = mean_difference(&plain, &on_device);
    println!("despill changed the result by {removed:.3}/255 on average");
    assert!(
        removed > 2.0 * difference.max(0.05),
        "despill did almost nothing: {removed:.3}/255"
    );
}
