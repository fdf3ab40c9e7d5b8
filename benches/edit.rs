//! Each edit operation at 1, 4 and 25 MP (throughput in pixels, so criterion reports
//! megapixels per second), and the whole pipeline for a typical e-commerce edit, on whatever
//! device is present (`CUTOUT_DEVICE` to force one).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use cutout_benches::{decoded, jpeg_photo};
use cutout_core::edit::{Editor, Job, photoroom};
use cutout_core::gpu::Gpu;
use cutout_core::ops::{
    BlurKind, ComposeLayers, ComposeStyle, Filter, GpuImage, ImageOps, PlaceMap, Refinement,
    ShadowLayer, cpu,
};

fn disc_mask(ops: &ImageOps, side: u32) -> GpuImage {
    let r = side as f32 * 0.3;
    let mask = image::RgbaImage::from_fn(side, side, |x, y| {
        let d = ((x as f32 - side as f32 / 2.0).powi(2) + (y as f32 - side as f32 / 2.0).powi(2))
            .sqrt();
        let v = ((r - d).clamp(0.0, 1.0) * 255.0) as u8;
        image::Rgba([v, v, v, 255])
    });
    ops.upload(&mask).unwrap()
}

fn operations(c: &mut Criterion) {
    cutout_benches::setup();
    let gpu = Gpu::from_env().expect("a wgpu adapter");
    let ops = ImageOps::new(&gpu);
    for megapixels in [1.0, 4.0, 25.0] {
        let side = (megapixels * 1e6f64).sqrt() as u32;
        let image = ops.upload(&decoded(&jpeg_photo(megapixels))).unwrap();
        let mask = disc_mask(&ops, side);
        let mut group = c.benchmark_group(format!("ops {megapixels} MP ({})", gpu.info.name));
        group.sample_size(10);
        group.throughput(Throughput::Elements(side as u64 * side as u64));
        let timed = |result: cutout_core::Result<GpuImage>| {
            ops.finish().unwrap();
            result.unwrap()
        };
        group.bench_function("resize lanczos3 to half", |b| {
            b.iter(|| timed(ops.resize(&image, side / 2, side / 2, Filter::Lanczos3)))
        });
        // The model's 320×320 mask to full size: plainly (the baseline), then refined.
        let coarse = disc_mask(&ops, 320);
        group.bench_function("mask upsample lanczos3 from 320", |b| {
            b.iter(|| timed(ops.resize(&coarse, side, side, Filter::Lanczos3)))
        });
        group.bench_function("mask refine (guided filter) from 320", |b| {
            b.iter(|| timed(ops.refine_mask(&image, &coarse, Refinement::default())))
        });
        // The same two on the CPU (`ops::cpu`, what CPU adapters use), from host images.
        let (photo, coarse) = (
            ops.download(&image).unwrap(),
            ops.download(&coarse).unwrap(),
        );
        group.bench_function("cpu: mask upsample lanczos3 from 320", |b| {
            b.iter(|| cpu::resize(&coarse, side, side, Filter::Lanczos3))
        });
        group.bench_function("cpu: mask refine (guided filter) from 320", |b| {
            b.iter(|| cpu::refine_mask(&photo, &coarse, Refinement::default()))
        });
        group.bench_function("place (scale 0.9)", |b| {
            let map = PlaceMap {
                canvas: [side, side],
                scale: 0.9,
                offset: [side as f32 * 0.05; 2],
                roi: [0.0, 0.0, side as f32, side as f32],
            };
            b.iter(|| {
                timed(
                    ops.place(&image, Some(&mask), map)
                        .map(|(colour, _)| colour),
                )
            })
        });
        let radius = side as f32 * 0.02;
        group.bench_function("gaussian blur, mask-aware, radius 0.02", |b| {
            b.iter(|| timed(ops.blur(&image, Some(&mask), BlurKind::Gaussian, radius)))
        });
        group.bench_function("bokeh blur, radius 0.02", |b| {
            b.iter(|| timed(ops.blur(&image, Some(&mask), BlurKind::Bokeh, radius)))
        });
        group.bench_function("outline, width 0.03", |b| {
            b.iter(|| timed(ops.outline(&mask, side as f32 * 0.03)))
        });
        let shadow = ShadowLayer {
            transform: [[1.0, 0.0, 0.0], [0.0, 10.0, -9.0 * side as f32 * 0.8]],
            blur: side as f32 * 0.02,
            opacity: 0.5,
        };
        group.bench_function("shadow (one layer)", |b| {
            b.iter(|| timed(ops.shadow(&mask, &[shadow])))
        });
        group.bench_function("compose", |b| {
            b.iter(|| {
                timed(ops.compose(
                    &ComposeLayers {
                        background: None,
                        shadow: Some(&mask),
                        outline: None,
                        subject: &image,
                        subject_mask: &mask,
                    },
                    ComposeStyle {
                        background_color: [1.0; 4],
                        channels: 0,
                        matte: [1.0; 4],
                        watermark: false,
                        despill: None,
                    },
                ))
            })
        });
        group.finish();
    }
}

fn ecommerce(c: &mut Criterion) {
    cutout_benches::setup();
    let gpu = Gpu::from_env().expect("a wgpu adapter");
    let editor = Editor::load(&gpu, "u2netp", false).expect("default model");
    let image = decoded(&jpeg_photo(1.0));
    let edit = photoroom::parse_v2_edit(
        [
            ("background.color", "FFFFFF"),
            ("shadow.mode", "ai.soft"),
            ("outputSize", "1000x1000"),
            ("padding", "0.1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    )
    .unwrap();
    let mut group = c.benchmark_group(format!("e-commerce edit ({})", gpu.info.name));
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    group.bench_function("1 MP JPEG, white, ai.soft, 1000x1000, padding 0.1", |b| {
        b.iter(|| {
            let job = Job {
                image: image.clone(),
                background: None,
                edit: edit.clone(),
            };
            editor.render(&[job]).pop().unwrap().unwrap()
        })
    });
    // What a server's batch costs: the jobs pass each stage together.
    group.throughput(Throughput::Elements(4));
    group.bench_function("batch of 4, same edit", |b| {
        b.iter(|| {
            let jobs: Vec<Job> = (0..4)
                .map(|_| Job {
                    image: image.clone(),
                    background: None,
                    edit: edit.clone(),
                })
                .collect();
            for result in editor.render(&jobs) {
                result.unwrap();
            }
        })
    });
    group.finish();
}

criterion_group!(benches, operations, ecommerce);
criterion_main!(benches);
