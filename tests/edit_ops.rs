//! Each WGSL image operation against a plain CPU reference on small synthetic images.
//! Tolerances: results are stored as 8-bit, so one level (plus float rounding) is the
//! floor for exact operations; approximations say why they allow more.

use cutout_core::ops::{
    BlurKind, ComposeLayers, ComposeStyle, Filter, ImageOps, MaskChannel, PlaceMap, Refinement,
    ShadowLayer,
};
use cutout_tests::*;
use image::{Rgba, RgbaImage};

const W: u32 = 64;
const H: u32 = 48;

fn ops() -> ImageOps {
    ImageOps::new(gpu())
}

/// A deterministic textured opaque image.
fn texture() -> RgbaImage {
    let mut state = 12345u32;
    RgbaImage::from_fn(W, H, |x, y| {
        state = state.wrapping_mul(1664525).wrapping_add(1013904223);
        let noise = (state >> 24) as u8 / 4;
        Rgba([
            ((x * 3) as u8).wrapping_add(noise),
            (y * 5) as u8,
            200 - noise,
            255,
        ])
    })
}

/// A soft-edged disc in the red channel.
fn disc_mask(cx: f32, cy: f32, r: f32) -> RgbaImage {
    RgbaImage::from_fn(W, H, |x, y| {
        let d = ((x as f32 + 0.5 - cx).powi(2) + (y as f32 + 0.5 - cy).powi(2)).sqrt();
        let v = ((r + 0.5 - d).clamp(0.0, 1.0) * 255.0).round() as u8;
        Rgba([v, v, v, 255])
    })
}

fn channel_max_diff(a: &RgbaImage, b: &RgbaImage, channels: std::ops::Range<usize>) -> u8 {
    a.pixels()
        .zip(b.pixels())
        .flat_map(|(p, q)| channels.clone().map(move |c| p.0[c].abs_diff(q.0[c])))
        .max()
        .unwrap_or(0)
}

fn full_roi() -> [f32; 4] {
    [0.0, 0.0, W as f32, H as f32]
}

#[test]
fn place_identity_keeps_pixels() {
    let ops = ops();
    let image = texture();
    let mask = disc_mask(30.0, 20.0, 12.0);
    let map = PlaceMap {
        canvas: [W, H],
        scale: 1.0,
        offset: [0.0, 0.0],
        roi: full_roi(),
    };
    let (colour, placed_mask) = ops
        .place(
            &ops.upload(&image).unwrap(),
            Some(&ops.upload(&mask).unwrap()),
            map,
        )
        .unwrap();
    let colour = ops.download(&colour).unwrap();
    let placed_mask = ops.download(&placed_mask).unwrap();
    assert_eq!(channel_max_diff(&colour, &image, 0..4), 0);
    assert!(channel_max_diff(&placed_mask, &mask, 0..1) <= 1);
}

/// CPU bilinear at canvas pixel centres, as the placement maps them.
fn reference_place(image: &RgbaImage, scale: f32, offset: [f32; 2], canvas: [u32; 2]) -> RgbaImage {
    let at = |x: i32, y: i32| {
        let x = x.clamp(0, image.width() as i32 - 1) as u32;
        let y = y.clamp(0, image.height() as i32 - 1) as u32;
        image.get_pixel(x, y).0.map(|c| c as f32)
    };
    RgbaImage::from_fn(canvas[0], canvas[1], |x, y| {
        let sx = (x as f32 + 0.5 - offset[0]) / scale - 0.5;
        let sy = (y as f32 + 0.5 - offset[1]) / scale - 0.5;
        let inside = |v: f32, extent: u32| v >= -0.5 && v <= extent as f32 - 0.5;
        if !inside(sx, image.width()) || !inside(sy, image.height()) {
            return Rgba([0, 0, 0, 0]);
        }
        let (x0, y0) = (sx.floor() as i32, sy.floor() as i32);
        let (tx, ty) = (sx - sx.floor(), sy - sy.floor());
        Rgba(std::array::from_fn(|c| {
            let top = at(x0, y0)[c] * (1.0 - tx) + at(x0 + 1, y0)[c] * tx;
            let bottom = at(x0, y0 + 1)[c] * (1.0 - tx) + at(x0 + 1, y0 + 1)[c] * tx;
            (top * (1.0 - ty) + bottom * ty).round() as u8
        }))
    })
}

#[test]
fn place_enlarged_matches_cpu_bilinear() {
    let ops = ops();
    let image = texture();
    let (scale, offset, canvas) = (2.5, [7.25, -3.5], [100, 90]);
    let map = PlaceMap {
        canvas,
        scale,
        offset,
        roi: full_roi(),
    };
    let (colour, _) = ops.place(&ops.upload(&image).unwrap(), None, map).unwrap();
    let colour = ops.download(&colour).unwrap();
    let reference = reference_place(&image, scale, offset, canvas);
    // Interior pixels: exact bilinear up to rounding. The frame edge's partial coverage is
    // antialiased on the GPU and not in this reference, so compare colour where both are
    // fully covered.
    let mut worst = 0;
    for (p, q) in colour.pixels().zip(reference.pixels()) {
        if p.0[3] == 255 && q.0[3] == 255 {
            worst = worst.max((0..3).map(|c| p.0[c].abs_diff(q.0[c])).max().unwrap());
        }
    }
    assert!(worst <= 1, "worst colour difference {worst}");
}

fn gaussian_1d(sigma: f32) -> Vec<f32> {
    let taps = (3.0 * sigma).ceil() as i32;
    let k: Vec<f32> = (-taps..=taps)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = k.iter().sum();
    k.into_iter().map(|v| v / sum).collect()
}

/// Separable gaussian of `values` (per pixel, 4 floats) with clamped edges.
fn reference_gaussian(values: &[[f32; 4]], sigma: f32) -> Vec<[f32; 4]> {
    let kernel = gaussian_1d(sigma);
    let taps = (kernel.len() / 2) as i32;
    let pass = |input: &[[f32; 4]], dx: i32, dy: i32| -> Vec<[f32; 4]> {
        (0..(W * H) as i32)
            .map(|i| {
                let (x, y) = (i % W as i32, i / W as i32);
                let mut sum = [0.0; 4];
                for (k, weight) in kernel.iter().enumerate() {
                    let o = k as i32 - taps;
                    let sx = (x + o * dx).clamp(0, W as i32 - 1);
                    let sy = (y + o * dy).clamp(0, H as i32 - 1);
                    let v = input[(sy * W as i32 + sx) as usize];
                    for c in 0..4 {
                        sum[c] += v[c] * weight;
                    }
                }
                sum
            })
            .collect()
    };
    pass(&pass(values, 1, 0), 0, 1)
}

#[test]
fn gaussian_blur_matches_cpu() {
    let ops = ops();
    let image = texture();
    let sigma = 3.0;
    let blurred = ops
        .blur(
            &ops.upload(&image).unwrap(),
            None,
            BlurKind::Gaussian,
            sigma,
        )
        .unwrap();
    let blurred = ops.download(&blurred).unwrap();
    let values: Vec<[f32; 4]> = image.pixels().map(|p| p.0.map(|c| c as f32)).collect();
    let reference = reference_gaussian(&values, sigma);
    let worst = blurred
        .pixels()
        .zip(&reference)
        .flat_map(|(p, r)| (0..4).map(move |c| (p.0[c] as f32 - r[c]).abs()))
        .fold(0.0, f32::max);
    assert!(worst <= 1.0, "worst {worst}");
}

#[test]
fn mask_aware_blur_keeps_subject_colour_out_of_the_background() {
    let ops = ops();
    // A red subject on a blue background, its soft edge mixing the two as a photo does.
    let mask = disc_mask(32.0, 24.0, 10.0);
    let image = RgbaImage::from_fn(W, H, |x, y| {
        let m = mask.get_pixel(x, y).0[0];
        Rgba([m, 0, 255 - m, 255])
    });
    let blurred = ops
        .blur(
            &ops.upload(&image).unwrap(),
            Some(&ops.upload(&mask).unwrap()),
            BlurKind::Gaussian,
            4.0,
        )
        .unwrap();
    let blurred = ops.download(&blurred).unwrap();
    // Everywhere the background can show (the subject is not fully opaque there), no red.
    let worst_red = blurred
        .pixels()
        .zip(mask.pixels())
        .filter(|(_, m)| m.0[0] < 255)
        .map(|(p, _)| p.0[0])
        .max()
        .unwrap();
    assert!(
        worst_red <= 1,
        "subject red bled into the background: {worst_red}"
    );
    assert!(
        blurred.pixels().all(|p| p.0[3] == 255),
        "the frame stays opaque"
    );

    // Against a CPU normalised convolution with weight (1 - mask).
    let values: Vec<[f32; 4]> = image
        .pixels()
        .zip(mask.pixels())
        .map(|(p, m)| {
            let w = (1.0 - 8.0 * m.0[0] as f32 / 255.0).clamp(0.0, 1.0);
            [p.0[0] as f32 * w, p.0[1] as f32 * w, p.0[2] as f32 * w, w]
        })
        .collect();
    let reference = reference_gaussian(&values, 4.0);
    for (p, r) in blurred.pixels().zip(&reference) {
        if r[3] > 0.05 {
            let blue = r[2] / r[3];
            assert!(
                (p.0[2] as f32 - blue).abs() <= 1.5,
                "blue {} vs {blue}",
                p.0[2]
            );
        }
    }
}

#[test]
fn large_radius_blur_runs_downsampled_and_stays_close() {
    let ops = ops();
    let image = texture();
    let sigma = 20.0;
    let blurred = ops
        .blur(
            &ops.upload(&image).unwrap(),
            None,
            BlurKind::Gaussian,
            sigma,
        )
        .unwrap();
    let blurred = ops.download(&blurred).unwrap();
    let values: Vec<[f32; 4]> = image.pixels().map(|p| p.0.map(|c| c as f32)).collect();
    let reference = reference_gaussian(&values, sigma);
    let mean: f32 = blurred
        .pixels()
        .zip(&reference)
        .map(|(p, r)| (0..3).map(|c| (p.0[c] as f32 - r[c]).abs()).sum::<f32>() / 3.0)
        .sum::<f32>()
        / (W * H) as f32;
    // The level is box-downsampled by 3 and upsampled bilinearly: a few levels of extra
    // smoothing on average is the price of a bounded cost per pixel.
    assert!(mean <= 4.0, "mean difference {mean}");
}

#[test]
fn bokeh_is_a_disc_average() {
    let ops = ops();
    // One bright point spreads into a disc of the given radius.
    let mut image = RgbaImage::from_pixel(W, H, Rgba([0, 0, 0, 255]));
    image.put_pixel(32, 24, Rgba([255, 255, 255, 255]));
    let blurred = ops
        .blur(&ops.upload(&image).unwrap(), None, BlurKind::Bokeh, 5.0)
        .unwrap();
    let blurred = ops.download(&blurred).unwrap();
    let lit = |x: u32, y: u32| blurred.get_pixel(x, y).0[0] > 0;
    assert!(lit(32, 24) && lit(36, 24) && lit(32, 19));
    assert!(!lit(39, 24) && !lit(32, 16));
    // Symmetric.
    assert_eq!(blurred.get_pixel(28, 24), blurred.get_pixel(36, 24));
}

#[test]
fn outline_matches_exact_distance() {
    let ops = ops();
    let mask = disc_mask(30.0, 22.0, 9.0);
    let width = 5.0;
    let band = ops.outline(&ops.upload(&mask).unwrap(), width).unwrap();
    let band = ops.download(&band).unwrap();
    let seeds: Vec<(f32, f32)> = mask
        .enumerate_pixels()
        .filter(|(_, _, p)| p.0[0] >= 128)
        .map(|(x, y, _)| (x as f32, y as f32))
        .collect();
    let mut wrong = 0;
    for (x, y, p) in band.enumerate_pixels() {
        let d = seeds
            .iter()
            .map(|(sx, sy)| ((x as f32 - sx).powi(2) + (y as f32 - sy).powi(2)).sqrt())
            .fold(f32::MAX, f32::min)
            - 0.5;
        let expected = ((width - d + 0.5).clamp(0.0, 1.0) * 255.0).round() as u8;
        if p.0[3].abs_diff(expected) > 1 {
            wrong += 1;
        }
    }
    // Jump flooding can miss the true nearest seed for a handful of pixels.
    assert!(
        wrong <= (W * H / 500),
        "{wrong} pixels differ from the exact distance band"
    );
}

#[test]
fn compose_matches_cpu_over() {
    let ops = ops();
    let subject = texture();
    let mask = disc_mask(30.0, 20.0, 12.0);
    let background = [0.2, 0.6, 0.4, 0.8];
    let subject_gpu = ops.upload(&subject).unwrap();
    let mask_gpu = ops.upload(&mask).unwrap();
    let out = ops
        .compose(
            &ComposeLayers {
                background: None,
                shadow: None,
                outline: None,
                subject: &subject_gpu,
                subject_mask: &mask_gpu,
            },
            ComposeStyle {
                background_color: background,
                channels: 0,
                matte: [1.0; 4],
                watermark: false,
                despill: None,
            },
        )
        .unwrap();
    let out = ops.download(&out).unwrap();
    for ((p, s), m) in out.pixels().zip(subject.pixels()).zip(mask.pixels()) {
        let a = m.0[0] as f32 / 255.0;
        let out_a = a + background[3] * (1.0 - a);
        for c in 0..3 {
            let premul = s.0[c] as f32 / 255.0 * a + background[c] * background[3] * (1.0 - a);
            let expected = (premul / out_a * 255.0).round();
            assert!((p.0[c] as f32 - expected).abs() <= 1.0);
        }
        assert!((p.0[3] as f32 - (out_a * 255.0).round()).abs() <= 1.0);
    }
}

/// The classic limiters as the reference: on a green background green falls to the mean of
/// red and blue; on a blue one blue falls to the mean of red and green.
#[test]
fn despill_limits_the_background_colour_channel() {
    let ops = ops();
    let subject = texture();
    let mask = RgbaImage::from_pixel(W, H, Rgba([255, 255, 255, 255]));
    let subject_gpu = ops.upload(&subject).unwrap();
    let mask_gpu = ops.upload(&mask).unwrap();
    let layers = ComposeLayers {
        background: None,
        shadow: None,
        outline: None,
        subject: &subject_gpu,
        subject_mask: &mask_gpu,
    };
    for (key, limited) in [([0.0, 1.0, 0.0], 1), ([0.0, 0.0, 1.0], 2)] {
        let style = ComposeStyle {
            background_color: [0.0; 4],
            channels: 0,
            matte: [1.0; 4],
            watermark: false,
            despill: Some(key),
        };
        let out = ops.download(&ops.compose(&layers, style).unwrap()).unwrap();
        for (p, s) in out.pixels().zip(subject.pixels()) {
            let rgb = [s.0[0], s.0[1], s.0[2]].map(|c| c as f32);
            let others: f32 = (0..3).filter(|&c| c != limited).map(|c| rgb[c]).sum();
            for (c, &value) in rgb.iter().enumerate() {
                let expected = if c == limited {
                    value.min(others / 2.0)
                } else {
                    value
                };
                assert!(
                    (p.0[c] as f32 - expected).abs() <= 1.0,
                    "key {key:?} channel {c}"
                );
            }
        }
    }
}

#[test]
fn mask_stats_match_cpu() {
    let ops = ops();
    let mask = disc_mask(30.0, 20.0, 8.0);
    let stats = ops
        .mask_stats(&ops.upload(&mask).unwrap(), MaskChannel::Red, full_roi())
        .unwrap();
    let fg: Vec<(u32, u32)> = mask
        .enumerate_pixels()
        .filter(|(_, _, p)| p.0[0] as f32 / 255.0 >= 0.05)
        .map(|(x, y, _)| (x, y))
        .collect();
    let x0 = fg.iter().map(|p| p.0).min().unwrap();
    let x1 = fg.iter().map(|p| p.0).max().unwrap() + 1;
    let y0 = fg.iter().map(|p| p.1).min().unwrap();
    let y1 = fg.iter().map(|p| p.1).max().unwrap() + 1;
    assert_eq!(stats.bbox, Some([x0, y0, x1, y1]));
    assert_eq!(stats.foreground as usize, fg.len());
}

#[test]
fn shadows_land_where_their_transform_puts_them_with_their_mass() {
    let ops = ops();
    let mask = disc_mask(32.0, 18.0, 10.0);
    let mask_gpu = ops.upload(&mask).unwrap();
    // Canvas point (x, y) reads the mask at (x, 2y − 22): the silhouette squashed to half
    // its height, its centre (32, 18) landing at (32, 20).
    let layer = ShadowLayer {
        transform: [[1.0, 0.0, 0.0], [0.0, 2.0, -22.0]],
        blur: 1.5,
        opacity: 0.8,
    };
    let first = ops
        .download(&ops.shadow(&mask_gpu, &[layer]).unwrap())
        .unwrap();
    // Against the geometry, computed by hand: half the disc's area, times the opacity (the
    // blur moves alpha but does not add or remove it), centred at (32, 20).
    let (mut mass, mut weighted_x, mut weighted_y) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y, p) in first.enumerate_pixels() {
        let a = p.0[3] as f64 / 255.0;
        mass += a;
        weighted_x += a * (x as f64 + 0.5);
        weighted_y += a * (y as f64 + 0.5);
    }
    let area: f64 = mask.pixels().map(|p| p.0[0] as f64 / 255.0).sum();
    let expected_mass = 0.8 * area / 2.0;
    let (centre_x, centre_y) = (weighted_x / mass, weighted_y / mass);
    println!(
        "shadow mass {mass:.2} (expected {expected_mass:.2}), centre ({centre_x:.2}, {centre_y:.2})"
    );
    assert!(
        (mass - expected_mass).abs() <= 0.03 * expected_mass,
        "mass {mass} vs {expected_mass}"
    );
    assert!((centre_x - 32.0).abs() <= 0.1, "centre x {centre_x}");
    assert!((centre_y - 20.0).abs() <= 0.1, "centre y {centre_y}");
}

/// The model's mask for the coffee photo (onnxruntime's, stored 16-bit) as the 8-bit grey
/// RGBA image the pipeline hands to the mask operations.
fn coffee_and_model_mask() -> (RgbaImage, RgbaImage) {
    let photo = image::open(fixture("images/coffee.jpg"))
        .unwrap()
        .to_rgba8();
    let mask = image::open(fixture("images/coffee.u2netp320.png"))
        .unwrap()
        .to_luma16();
    let mask = RgbaImage::from_fn(320, 320, |x, y| {
        let v = (mask.get_pixel(x, y).0[0] >> 8) as u8;
        Rgba([v, v, v, 255])
    });
    (photo, mask)
}

/// `ops::cpu` (used on CPU adapters) gives the shaders' pixels to within one level: resizing
/// down, up, and by one axis, with both filters.
#[test]
fn cpu_resize_matches_the_shader() {
    let ops = ops();
    let (photo, mask) = coffee_and_model_mask();
    let cases = [
        (&photo, 320, 320, Filter::Lanczos3),
        (&photo, 257, 400, Filter::Lanczos3),
        (&photo, 451, 300, Filter::Bilinear),
        (&mask, 1300, 867, Filter::Lanczos3),
        (&mask, 640, 320, Filter::Bilinear),
    ];
    for (source, width, height, filter) in cases {
        let shader = ops.resize(&ops.upload(source).unwrap(), width, height, filter);
        let shader = ops.download(&shader.unwrap()).unwrap();
        let cpu = cutout_core::ops::cpu::resize(source, width, height, filter);
        let diff = channel_max_diff(&shader, &cpu, 0..4);
        assert!(diff <= 1, "{width}x{height} {filter:?}: differs by {diff}");
    }
}

/// The guided-filter refinement on the CPU against `shaders/refine.wgsl`, on a real photo
/// and the model's mask for it: at the photo's size (the filter's level is the photo) and
/// enlarged to 1300x867 (the level is a shrunk copy).
#[test]
fn cpu_refinement_matches_the_shader() {
    let ops = ops();
    let (photo, mask) = coffee_and_model_mask();
    let enlarged = image::imageops::resize(&photo, 1300, 867, image::imageops::Lanczos3);
    for photo in [&photo, &enlarged] {
        let refinement = Refinement::default();
        let shader = ops.refine_mask(
            &ops.upload(photo).unwrap(),
            &ops.upload(&mask).unwrap(),
            refinement,
        );
        let shader = ops.download(&shader.unwrap()).unwrap();
        let cpu = cutout_core::ops::cpu::refine_mask(photo, &mask, refinement);
        let differing = shader.pixels().zip(cpu.pixels()).filter(|(a, b)| a != b);
        println!(
            "{}x{}: {} pixels differ",
            photo.width(),
            photo.height(),
            differing.count()
        );
        let diff = channel_max_diff(&shader, &cpu, 0..4);
        assert!(
            diff <= 1,
            "{}x{}: differs by {diff}",
            photo.width(),
            photo.height()
        );
        // Not a trivial agreement: the refined mask has a real edge.
        let partial = cpu.pixels().filter(|p| p.0[0] > 10 && p.0[0] < 245).count();
        assert!(partial > 500, "{partial} edge pixels");
    }
}

/// A deterministic image with every channel random, alpha included.
fn noise(width: u32, height: u32, seed: u32) -> RgbaImage {
    let mut state = seed;
    RgbaImage::from_fn(width, height, |_, _| {
        let mut next = || {
            state = state.wrapping_mul(1664525).wrapping_add(1013904223);
            (state >> 24) as u8
        };
        Rgba([next(), next(), next(), next()])
    })
}

/// The coffee photo's refined model mask, the real input of the statistics and placement.
fn coffee_and_refined_mask() -> (RgbaImage, RgbaImage) {
    let (photo, mask) = coffee_and_model_mask();
    let refined = cutout_core::ops::cpu::refine_mask(&photo, &mask, Refinement::default());
    (photo, refined)
}

#[test]
fn cpu_mask_stats_match_the_shader() {
    let ops = ops();
    let (photo, mask) = coffee_and_refined_mask();
    let (w, h) = (photo.width() as f32, photo.height() as f32);
    let uploaded = ops.upload(&mask).unwrap();
    // The same matte as a photo's own transparency: its colours must not count.
    let mut cut_out = photo.clone();
    for (pixel, m) in cut_out.pixels_mut().zip(mask.pixels()) {
        pixel.0[3] = m.0[0];
    }
    let uploaded_cut_out = ops.upload(&cut_out).unwrap();
    for roi in [[0.0, 0.0, w, h], [40.5, 10.0, w * 0.6, h * 0.7], [0.0; 4]] {
        let shader = ops.mask_stats(&uploaded, MaskChannel::Red, roi).unwrap();
        let cpu = cutout_core::ops::cpu::mask_stats(&mask, MaskChannel::Red, roi);
        assert_eq!(cpu, shader, "roi {roi:?}");
        let alpha_shader = ops
            .mask_stats(&uploaded_cut_out, MaskChannel::Alpha, roi)
            .unwrap();
        let alpha_cpu = cutout_core::ops::cpu::mask_stats(&cut_out, MaskChannel::Alpha, roi);
        assert_eq!(alpha_shader, shader, "alpha, roi {roi:?}");
        assert_eq!(alpha_cpu, cpu, "alpha, roi {roi:?}");
    }
    let whole = cutout_core::ops::cpu::mask_stats(&mask, MaskChannel::Red, [0.0, 0.0, w, h]);
    assert!(
        whole.foreground > 10_000 && whole.uncertain > 100,
        "{whole:?}"
    );
}

#[test]
fn cpu_place_matches_the_shader() {
    let ops = ops();
    let (photo, mask) = coffee_and_refined_mask();
    let translucent = noise(photo.width(), photo.height(), 7);
    let (w, h) = (photo.width() as f32, photo.height() as f32);
    let map = |canvas: [u32; 2], scale: f32, offset: [f32; 2], roi: [f32; 4]| PlaceMap {
        canvas,
        scale,
        offset,
        roi,
    };
    let cases = [
        (
            "identity",
            &photo,
            Some(&mask),
            map(
                [photo.width(), photo.height()],
                1.0,
                [0.0; 2],
                [0.0, 0.0, w, h],
            ),
        ),
        (
            "enlarged and cropped",
            &photo,
            Some(&mask),
            map([700, 500], 1.7, [-80.5, 20.25], [30.0, 12.0, w - 9.5, h]),
        ),
        (
            "shrunk (Lanczos first)",
            &photo,
            Some(&mask),
            map([400, 300], 0.4, [31.0, 17.5], [0.0, 0.0, w, h]),
        ),
        (
            "opaque, no mask",
            &photo,
            None,
            map([500, 500], 1.0, [12.0, 40.0], [0.0, 0.0, w, h]),
        ),
        (
            "translucent source",
            &translucent,
            Some(&mask),
            map([450, 320], 1.3, [-3.3, -7.9], [0.0, 0.0, w, h]),
        ),
    ];
    for (name, image, mask, map) in cases {
        let upload = |i: &RgbaImage| ops.upload(i).unwrap();
        let uploaded_mask = mask.map(upload);
        let (colour, canvas_mask) = ops
            .place(&upload(image), uploaded_mask.as_ref(), map)
            .unwrap();
        let (colour, canvas_mask) = (
            ops.download(&colour).unwrap(),
            ops.download(&canvas_mask).unwrap(),
        );
        let (cpu_colour, cpu_mask) = cutout_core::ops::cpu::place(image, mask, map);
        let colour_diff = channel_max_diff(&colour, &cpu_colour, 0..4);
        let mask_diff = channel_max_diff(&canvas_mask, &cpu_mask, 0..4);
        assert!(
            colour_diff <= 1 && mask_diff <= 1,
            "{name}: colour {colour_diff}, mask {mask_diff}"
        );
        let covered = cpu_mask.pixels().filter(|p| p.0[0] > 0).count();
        assert!(covered > 1000, "{name}: {covered} mask pixels");
    }
}

#[test]
fn cpu_compose_matches_the_shader() {
    let ops = ops();
    let (w, h) = (160, 120);
    let [background, shadow, band, subject, subject_mask] =
        [1, 2, 3, 4, 5].map(|seed| noise(w, h, seed));
    let styles = [
        ComposeStyle {
            background_color: [0.0; 4],
            channels: 0,
            matte: [1.0; 4],
            watermark: false,
            despill: None,
        },
        ComposeStyle {
            background_color: [0.2, 0.4, 0.9, 0.6],
            channels: 1,
            matte: [1.0, 0.5, 0.25, 1.0],
            watermark: true,
            despill: Some([0.1, 0.8, 0.2]),
        },
        ComposeStyle {
            background_color: [1.0; 4],
            channels: 2,
            matte: [1.0; 4],
            watermark: false,
            despill: None,
        },
    ];
    let uploaded =
        [&background, &shadow, &band, &subject, &subject_mask].map(|i| ops.upload(i).unwrap());
    for style in styles {
        for all_layers in [false, true] {
            let shader_layers = ComposeLayers {
                background: all_layers.then_some(&uploaded[0]),
                shadow: all_layers.then_some(&uploaded[1]),
                outline: all_layers.then_some((&uploaded[2], [0.9, 0.1, 0.3, 0.8])),
                subject: &uploaded[3],
                subject_mask: &uploaded[4],
            };
            let cpu_layers = ComposeLayers {
                background: all_layers.then_some(&background),
                shadow: all_layers.then_some(&shadow),
                outline: all_layers.then_some((&band, [0.9, 0.1, 0.3, 0.8])),
                subject: &subject,
                subject_mask: &subject_mask,
            };
            let shader = ops
                .download(&ops.compose(&shader_layers, style).unwrap())
                .unwrap();
            let cpu = cutout_core::ops::cpu::compose(&cpu_layers, style).unwrap();
            let diff = channel_max_diff(&shader, &cpu, 0..4);
            assert!(
                diff <= 1,
                "{style:?}, all layers {all_layers}: differs by {diff}"
            );
        }
    }
}

/// A device error inside `capturing` comes back as this thread's typed error (wgpu's
/// default handler would panic the worker), and the device keeps working afterwards.
#[test]
fn device_errors_are_typed_errors() {
    let ops = ops();
    let device = &gpu().device;
    let result = ops.capturing(|| {
        let _refused = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("larger than the device allows"),
            size: device.limits().max_buffer_size + 4,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Ok(())
    });
    assert!(
        matches!(result, Err(cutout_core::Error::Device(_))),
        "{result:?}"
    );
    let image = RgbaImage::from_pixel(8, 8, Rgba([10, 20, 30, 255]));
    let round_trip = ops.capturing(|| ops.download(&ops.upload(&image)?));
    assert_eq!(round_trip.unwrap(), image);
}

/// A photo whose left half is `left` and right half a red subject, and a model mask (at
/// another size) that marks the left half as background.
fn photo_and_background_mask(left: [u8; 3]) -> (RgbaImage, RgbaImage) {
    let photo = RgbaImage::from_fn(400, 300, |x, _| {
        let [r, g, b] = if x < 200 { left } else { [200, 30, 30] };
        Rgba([r, g, b, 255])
    });
    let mask = RgbaImage::from_fn(320, 320, |x, _| {
        let v = if x < 160 { 0 } else { 255 };
        Rgba([v, v, v, 255])
    });
    (photo, mask)
}

#[test]
fn the_spill_key_is_the_coloured_background() {
    let (photo, mask) = photo_and_background_mask([20, 60, 220]);
    let key = cutout_core::ops::cpu::spill_colour(&photo, &mask).unwrap();
    let expected = [20.0 / 255.0, 60.0 / 255.0, 220.0 / 255.0];
    for c in 0..3 {
        assert!((key[c] - expected[c]).abs() < 1e-3, "{key:?}");
    }
    let (photo, mask) = photo_and_background_mask([235, 235, 230]);
    let white = cutout_core::ops::cpu::spill_colour(&photo, &mask);
    assert_eq!(white, None, "white has no spill");
}

/// The key measured and consumed on the device removes the same spill as the host's key:
/// a blue background, a grey one (green, the fallback) and no background at all (green).
#[test]
fn despill_measured_on_the_device_matches_the_host_key() {
    let ops = ops();
    let subject = texture();
    let subject_mask = RgbaImage::from_pixel(W, H, Rgba([255, 255, 255, 255]));
    let (subject_gpu, subject_mask_gpu) = (
        ops.upload(&subject).unwrap(),
        ops.upload(&subject_mask).unwrap(),
    );
    let layers = ComposeLayers {
        background: None,
        shadow: None,
        outline: None,
        subject: &subject_gpu,
        subject_mask: &subject_mask_gpu,
    };
    let style = ComposeStyle {
        background_color: [0.0; 4],
        channels: 0,
        matte: [1.0; 4],
        watermark: false,
        despill: None,
    };
    let all_subject = RgbaImage::from_pixel(320, 320, Rgba([255, 255, 255, 255]));
    let cases = [
        photo_and_background_mask([20, 60, 220]),
        photo_and_background_mask([128, 128, 128]),
        (photo_and_background_mask([0, 0, 0]).0, all_subject),
    ];
    for (photo, mask) in cases {
        let host_key =
            cutout_core::ops::cpu::spill_colour(&photo, &mask).unwrap_or([0.0, 1.0, 0.0]);
        let limiter = ops
            .measure_spill(&ops.upload(&photo).unwrap(), &ops.upload(&mask).unwrap())
            .unwrap();
        let device = ops
            .download(&ops.compose_despilled(&layers, style, &limiter).unwrap())
            .unwrap();
        let host_style = ComposeStyle {
            despill: Some(host_key),
            ..style
        };
        let host = cutout_core::ops::cpu::compose(
            &ComposeLayers {
                background: None,
                shadow: None,
                outline: None,
                subject: &subject,
                subject_mask: &subject_mask,
            },
            host_style,
        )
        .unwrap();
        let worst = device
            .as_raw()
            .iter()
            .zip(host.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst <= 1, "key {host_key:?}: worst difference {worst}/255");
        let changed = host
            .as_raw()
            .iter()
            .zip(subject.as_raw())
            .any(|(a, b)| a != b);
        assert!(
            changed,
            "key {host_key:?} removed no spill: the test would not see one"
        );
    }
}

/// A resize to the image's own size is a copy; it must keep what was recorded before it,
/// which is submitted with it (it once dropped the thread's pending commands).
#[test]
fn a_same_size_resize_keeps_the_commands_recorded_before_it() {
    let ops = ops();
    let image = ops.upload(&texture()).unwrap();
    let expected = ops
        .download(&ops.resize(&image, 20, 10, Filter::Lanczos3).unwrap())
        .unwrap();
    let recorded = ops.resize(&image, 20, 10, Filter::Lanczos3).unwrap();
    let copy = ops.resize(&image, W, H, Filter::Lanczos3).unwrap();
    assert_eq!(ops.download(&copy).unwrap(), texture());
    assert_eq!(ops.download(&recorded).unwrap(), expected);
}
