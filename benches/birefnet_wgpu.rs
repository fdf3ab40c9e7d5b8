//! BiRefNet on the wgpu path before a GPU is at hand: kernel dispatches per forward and what
//! the device allocator held, so the GPU path is known not to be pathological.
//!
//! `CUBECL_DEBUG_LOG=/tmp/cubecl.log CUBECL_DEBUG_OPTION=profile cargo bench --workspace
//! --profile dev --bench birefnet_wgpu` runs the tiny fixture (or, with
//! `CUTOUT_BIREFNET_FULL=DIR`, the full-size random-weight models) at 1024² on the adapter
//! cutout picks (lavapipe here): one warm-up forward, then one measured forward. The
//! dispatches are the lines cubecl's profiler logs for the measured forward (each kernel
//! launch is one line); the memory comes from burn's `Device::memory_pool_usage` and
//! `memory_pool_report` after it.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use cutout_core::gpu::{DevicePreference, Gpu};
use cutout_core::model::birefnet::BiRefNet;
use cutout_core::model::state_dict::StateDict;

const SIDE: usize = 1024;

fn main() {
    cutout_benches::setup();
    let gpu = Gpu::new(DevicePreference::Auto).expect("a wgpu adapter");
    let device = gpu.burn_device.clone();
    println!("adapter: {} ({:?})", gpu.info.name, gpu.info.device_type);
    let limits = gpu.device.limits();
    println!(
        "largest buffer the adapter binds: {} MB (max_storage_buffer_binding_size), \
         max_buffer_size {} MB",
        limits.max_storage_buffer_binding_size >> 20,
        limits.max_buffer_size >> 20
    );
    let log = std::env::var_os("CUBECL_DEBUG_LOG").map(PathBuf::from);
    if log.is_none() {
        println!("CUBECL_DEBUG_LOG is not set: dispatches are not counted");
    }
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/birefnet");
    let mut models = vec![("tiny fixture", fixtures.join("birefnet-tiny.safetensors"))];
    if let Some(dir) = std::env::var_os("CUTOUT_BIREFNET_FULL").map(PathBuf::from) {
        models.push(("lite (Swin-T)", dir.join("birefnet-swin_v1_t.safetensors")));
        models.push((
            "general (Swin-L)",
            dir.join("birefnet-swin_v1_l.safetensors"),
        ));
    }
    for (name, path) in models.into_iter().filter(|(_, p)| p.exists()) {
        let model = BiRefNet::load(StateDict::open(&path).unwrap(), &device).unwrap();
        let x = Tensor::<4>::ones([1, 3, SIDE, SIDE], &device);
        let _ = model.outputs(x.clone()).logits.into_data(); // compiles the kernels
        let before = log_lines(log.as_deref());
        let started = std::time::Instant::now();
        let _ = model.outputs(x).logits.into_data();
        let elapsed = started.elapsed();
        let dispatches = log_lines(log.as_deref()).map(|after| after - before.unwrap_or(0));
        println!("{name} at {SIDE}²: forward {elapsed:.2?}");
        if let Some(dispatches) = dispatches {
            println!("  kernel dispatches per forward: {dispatches}");
        }
        report_memory(&device);
    }
}

/// Lines in cubecl's log so far (its logger writes from a thread of its own: wait for it to
/// settle).
fn log_lines(log: Option<&Path>) -> Option<usize> {
    let log = log?;
    let mut last = usize::MAX;
    loop {
        let count = std::fs::read_to_string(log).map_or(0, |t| t.lines().count());
        if count == last {
            return Some(count);
        }
        last = count;
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn report_memory(device: &Device) {
    const MB: f64 = 1024.0 * 1024.0;
    if let Some(usage) = device.memory_pool_usage() {
        println!(
            "  device memory: {:.0} MB reserved, {:.0} MB in use after the forward",
            usage.bytes_reserved as f64 / MB,
            usage.bytes_in_use as f64 / MB
        );
    }
    if let Some(pools) = device.memory_pool_report() {
        let largest = pools.iter().map(|p| p.largest_alloc).max().unwrap_or(0);
        let peak: u64 = pools.iter().map(|p| p.page_size * p.pages_peak).sum();
        println!(
            "  sliced pools: peak {:.0} MB of pages, largest allocation {:.1} MB \
             (allocations above the largest page size get their own page and are not in this)",
            peak as f64 / MB,
            largest as f64 / MB
        );
    }
}
