//! BiRefNet's forward at 1024² on burn's CPU backend (flex, cutout's convolution kernel), for
//! the real configurations with random weights that `make_birefnet_fixture.py --full DIR`
//! writes. `benches/birefnet_cpu.sh` runs it beside onnxruntime on the same weights.
//!
//! `CUTOUT_BIREFNET_FULL=DIR cargo bench --workspace --profile dev --bench birefnet -- --quick`
//! (nothing runs without it).

use burn::tensor::{Device, Tensor, TensorData};
use criterion::{Criterion, criterion_group, criterion_main};
use cutout_core::model::birefnet::BiRefNet;
use cutout_core::model::state_dict::StateDict;

fn forward(c: &mut Criterion) {
    cutout_benches::setup();
    let Some(dir) = std::env::var_os("CUTOUT_BIREFNET_FULL").map(std::path::PathBuf::from) else {
        eprintln!("CUTOUT_BIREFNET_FULL is not set: nothing to measure");
        return;
    };
    let mut group = c.benchmark_group("birefnet forward 1024");
    group.sample_size(10);
    for (name, stem) in [
        ("lite (Swin-T)", "birefnet-swin_v1_t"),
        ("general (Swin-L)", "birefnet-swin_v1_l"),
    ] {
        let weights = dir.join(format!("{stem}.safetensors"));
        if !weights.exists() {
            continue;
        }
        let device = Device::flex();
        let model = BiRefNet::load(StateDict::open(&weights).unwrap(), &device).unwrap();
        let mut reference =
            StateDict::open(&dir.join(format!("{stem}.reference.safetensors"))).unwrap();
        let shape = [1, 3, 1024, 1024];
        let input = reference.take("input", &shape).unwrap();
        let x = Tensor::<4>::from_data(TensorData::new(input, shape), &device);
        // One untimed forward first, as `birefnet_ort.py` times warm runs: criterion's
        // `--quick` takes a single sample of a forward this long, with no warm-up, and a
        // first forward also pays the kernel for zeroing its fresh pages.
        model.outputs(x.clone()).logits.into_data();
        group.bench_function(name, |b| {
            b.iter(|| model.outputs(x.clone()).logits.into_data())
        });
    }
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
