//! Model forward at batch 1 and 8, and end-to-end removal (decode → mask → cut-out → PNG)
//! of 1 MP and 4 MP JPEGs, on whatever device is present (`CUTOUT_DEVICE` to force one).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use cutout_benches::{decoded, jpeg_photo};
use cutout_core::edit::{Edit, Editor, Job};
use cutout_core::encode::encode_result;
use cutout_core::gpu::Gpu;

fn benches(c: &mut Criterion) {
    cutout_benches::setup();
    let gpu = Gpu::from_env().expect("a wgpu adapter");
    let editor = Editor::load(&gpu, "u2netp", false).expect("default model");
    let session = editor.remover().session();
    let backend = format!("{:?}", session.device());

    let mut forward = c.benchmark_group(format!("u2netp forward 320x320 ({backend})"));
    forward.sample_size(10);
    let image_input = vec![0.1f32; 3 * 320 * 320];
    for batch in [1usize, 8] {
        forward.throughput(Throughput::Elements(batch as u64));
        let input: Vec<f32> = image_input
            .iter()
            .copied()
            .cycle()
            .take(batch * 3 * 320 * 320)
            .collect();
        forward.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
            b.iter(|| session.predict(input.clone(), batch, [320, 320]).unwrap())
        });
    }
    forward.finish();

    let mut end_to_end = c.benchmark_group(format!("remove end to end ({})", gpu.info.name));
    end_to_end.sample_size(10);
    for megapixels in [1.0, 4.0] {
        let jpeg = jpeg_photo(megapixels);
        end_to_end.throughput(Throughput::Elements(1));
        end_to_end.bench_function(format!("{megapixels} MP JPEG to PNG"), |b| {
            b.iter(|| {
                let edit = Edit::default();
                let (format, channels) = (edit.format, edit.channels);
                let job = Job {
                    image: decoded(&jpeg),
                    background: None,
                    edit,
                };
                let output = editor.render(&[job]).remove(0).unwrap();
                encode_result(&output.image, format, channels, None).unwrap()
            })
        });
    }
    end_to_end.finish();
}

criterion_group!(remove, benches);
criterion_main!(remove);
