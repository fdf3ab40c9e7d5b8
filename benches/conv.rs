//! U²-Net's and IS-Net's convolution shapes on the CPU: burn flex's im2col + gemm convolution (the
//! baseline) against cutout's kernels (`model::cpu_conv`: Winograd where it pays, and the
//! direct kernel alone), in the same process; and BiRefNet's deformable convolutions, flex's
//! against cutout's (`model::cpu_deform`).
//! Throughput is in FLOP (2 per multiply-add).

use burn::tensor::module::{conv2d, deform_conv2d};
use burn::tensor::ops::{ConvOptions, DeformConvOptions};
use burn::tensor::{Device, Tensor, TensorData};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use cutout_core::model::cpu_conv::{PackedConv, PackedLinear, Planes};
use cutout_core::model::cpu_deform::PackedDeformConv;

fn values(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

fn benches(c: &mut Criterion) {
    cutout_benches::setup();
    let device = Device::flex();
    // (input channels, output channels, side, dilation): u2netp's top stage, a decoder conv
    // over a concatenation, the 4→1 side output, and the dilated bottom of an RSU-4F; then
    // IS-Net at 1024² input: its top stage at 512², and the wide decoder inputs at 64² and 32².
    let shapes = [
        (16, 16, 320, 1),
        (32, 16, 320, 1),
        (64, 16, 160, 1),
        (16, 64, 160, 1),
        (128, 16, 320, 1),
        (32, 64, 320, 1),
        (32, 32, 320, 1),
        (64, 32, 160, 1),
        (16, 16, 20, 8),
        (64, 64, 512, 1),
        (1024, 256, 64, 1),
        (1024, 512, 32, 1),
        (512, 256, 32, 2),
    ];
    let mut group = c.benchmark_group("conv 3x3 (CPU)");
    group.sample_size(10);
    for (cin, cout, side, dilation) in shapes {
        let flops = 2 * cin * cout * 9 * side * side;
        group.throughput(Throughput::Elements(flops as u64));
        let input = values(cin * side * side);
        let weight = values(cout * cin * 9);
        let bias = values(cout);
        let name = format!("{cin}->{cout} {side}x{side} dilation {dilation}");

        let x = Tensor::<4>::from_data(
            TensorData::new(input.clone(), [1, cin, side, side]),
            &device,
        );
        let w = Tensor::<4>::from_data(TensorData::new(weight.clone(), [cout, cin, 3, 3]), &device);
        let b = Tensor::<1>::from_data(TensorData::new(bias.clone(), [cout]), &device);
        let options = ConvOptions::new([1, 1], [dilation, dilation], [dilation, dilation], 1);
        group.bench_function(format!("{name}: flex"), |bench| {
            bench
                .iter(|| conv2d(x.clone(), w.clone(), Some(b.clone()), options.clone()).into_data())
        });

        let packed = PackedConv::new(&weight, [cout, cin, 3, 3], &bias, dilation);
        let planes = [Planes {
            data: &input,
            channels: cin,
        }];
        group.bench_function(format!("{name}: cutout"), |bench| {
            bench.iter(|| packed.forward(&planes, 1, [side, side], true))
        });
        let direct = packed.without_winograd();
        group.bench_function(format!("{name}: cutout direct"), |bench| {
            bench.iter(|| direct.forward(&planes, 1, [side, side], true))
        });
    }
    group.finish();
}

/// BiRefNet's ASPP deformable convolutions at 1024² input (64 inputs, 256 planes, one
/// offset group, offsets of a few pixels): flex's `deform_conv2d` against cutout's kernel
/// (`model::cpu_deform`), same inputs.
fn deformable(c: &mut Criterion) {
    cutout_benches::setup();
    let device = Device::flex();
    let mut group = c.benchmark_group("deformable conv (CPU)");
    group.sample_size(10);
    let (cin, cout) = (64, 256);
    for (size, side) in [(3, 64), (7, 64), (3, 128), (7, 128)] {
        let taps = size * size;
        let flops = 2 * cin * cout * taps * side * side;
        group.throughput(Throughput::Elements(flops as u64));
        let input = values(cin * side * side);
        let weight = values(cout * cin * taps);
        let bias = values(cout);
        let offset: Vec<f32> = values(2 * taps * side * side)
            .iter()
            .map(|v| v * 3.0)
            .collect();
        let mask: Vec<f32> = values(taps * side * side).iter().map(|v| v + 1.0).collect();
        let name = format!("{cin}->{cout} {size}x{size} at {side}x{side}");
        let tensor = |data: &[f32], shape: [usize; 4]| {
            Tensor::<4>::from_data(TensorData::new(data.to_vec(), shape), &device)
        };
        let (x, o, w, m) = (
            tensor(&input, [1, cin, side, side]),
            tensor(&offset, [1, 2 * taps, side, side]),
            tensor(&weight, [cout, cin, size, size]),
            tensor(&mask, [1, taps, side, side]),
        );
        let b = Tensor::<1>::from_data(TensorData::new(bias.clone(), [cout]), &device);
        let pad = size / 2;
        let options = DeformConvOptions::new([1, 1], [pad, pad], [1, 1], 1, 1);
        group.bench_function(format!("{name}: flex"), |bench| {
            bench.iter(|| {
                deform_conv2d(
                    x.clone(),
                    o.clone(),
                    w.clone(),
                    Some(m.clone()),
                    Some(b.clone()),
                    options.clone(),
                )
                .into_data()
            })
        });
        let packed = PackedDeformConv::new(&weight, [cout, cin, size, size], &bias);
        group.bench_function(format!("{name}: cutout"), |bench| {
            bench.iter(|| packed.forward(&input, &offset, &mask, 1, [side, side]))
        });
    }
    group.finish();
}

/// BiRefNet-general's (Swin-L) linear layers at 1024² input: the third stage's attention
/// projection and MLP (4,096 tokens, width 768) and the first stage's MLP (16,384 of its
/// 65,536 tokens, width 192): flex's matmul against cutout's kernel, same inputs.
fn linear(c: &mut Criterion) {
    cutout_benches::setup();
    let device = Device::flex();
    let mut group = c.benchmark_group("linear (CPU)");
    group.sample_size(10);
    for (tokens, inputs, outputs) in [
        (4096, 768, 2304),
        (4096, 768, 3072),
        (4096, 3072, 768),
        (16384, 192, 768),
        (16384, 768, 192),
    ] {
        group.throughput(Throughput::Elements((2 * tokens * inputs * outputs) as u64));
        let x = values(tokens * inputs);
        let weight = values(outputs * inputs);
        let bias = values(outputs);
        let name = format!("{tokens} tokens {inputs}->{outputs}");
        let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [tokens, inputs]), &device);
        let wt =
            Tensor::<2>::from_data(TensorData::new(weight.clone(), [outputs, inputs]), &device)
                .transpose();
        let bt = Tensor::<2>::from_data(TensorData::new(bias.clone(), [1, outputs]), &device);
        group.bench_function(format!("{name}: flex"), |bench| {
            bench.iter(|| (xt.clone().matmul(wt.clone()) + bt.clone()).into_data())
        });
        let packed = PackedLinear::new(&weight, [outputs, inputs], Some(&bias));
        group.bench_function(format!("{name}: cutout"), |bench| {
            bench.iter(|| packed.forward(&x, false))
        });
    }
    group.finish();
}

criterion_group!(conv, benches, deformable, linear);
criterion_main!(conv);
