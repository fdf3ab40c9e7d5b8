// Model input from an RGBA8 image, as rembg prepares it: scale by the image's maximum
// channel value, then (x - mean) / std per channel, written planar (CHW) as f32: into a
// buffer of cutout's, or straight into the model's input tensor on the device.

struct Params {
    width: u32,
    height: u32,
    // Index of the first plane value in `dst` (the binding may start earlier).
    base: u32,
    mean: vec4<f32>,
    inv_std: vec4<f32>,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> max_value: atomic<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

var<workgroup> group_max: atomic<u32>;

fn rgb(index: u32) -> vec3<u32> {
    let p = src[index];
    return vec3<u32>(p & 0xffu, (p >> 8u) & 0xffu, (p >> 16u) & 0xffu);
}

// Pass 1: the largest 8-bit channel value over the image, into `max_value`.
@compute @workgroup_size(256)
fn find_max(@builtin(global_invocation_id) id: vec3<u32>,
            @builtin(local_invocation_index) local: u32) {
    let count = params.width * params.height;
    if (id.x < count) {
        let c = rgb(id.x);
        atomicMax(&group_max, max(c.r, max(c.g, c.b)));
    }
    workgroupBarrier();
    if (local == 0u) {
        atomicMax(&max_value, atomicLoad(&group_max));
    }
}

// Pass 2: normalise each pixel into three planes.
@compute @workgroup_size(256)
fn normalize(@builtin(global_invocation_id) id: vec3<u32>) {
    let count = params.width * params.height;
    if (id.x >= count) {
        return;
    }
    let scale = 1.0 / max(f32(atomicLoad(&max_value)), 1e-6);
    let value = (vec3<f32>(rgb(id.x)) * scale - params.mean.rgb) * params.inv_std.rgb;
    let at = params.base + id.x;
    dst[at] = value.r;
    dst[at + count] = value.g;
    dst[at + 2u * count] = value.b;
}
