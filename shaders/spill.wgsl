// The background colour a subject may have picked up, and the spill limiter that removes it
// (`compose.wgsl` applies it). `measure` sums the photo's colour where the model's mask says
// background; `limiter` turns the sums into the limiter's weights and direction. A grey,
// white or black background spills nothing worth removing: like an empty background, it
// falls back to green, the colour PhotoRoom documents despill for.

struct Params {
    // The model's mask (its red channel), at the model's input size.
    mask_size: vec2<u32>,
    photo_size: vec2<u32>,
}

struct Sums {
    red: atomic<u32>,
    green: atomic<u32>,
    blue: atomic<u32>,
    count: atomic<u32>,
}

// The subject loses max(0, rgb·weights) × direction.
struct Limiter {
    weights: vec4<f32>,
    direction: vec4<f32>,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> mask: array<u32>;
@group(0) @binding(2) var<storage, read> photo: array<u32>;
@group(0) @binding(3) var<storage, read_write> sums: Sums;
@group(0) @binding(4) var<storage, read_write> limiter: Limiter;

// Mask values below this (of 255) are background.
const BACKGROUND: u32 = 13u;
// A background whose channels differ by less than this is not coloured.
const MIN_CHROMA: f32 = 0.15;

var<workgroup> local: array<atomic<u32>, 4>;

@compute @workgroup_size(8, 8)
fn measure(
    @builtin(global_invocation_id) id: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let inside = id.x < params.mask_size.x && id.y < params.mask_size.y;
    if (inside && (mask[id.y * params.mask_size.x + id.x] & 0xffu) < BACKGROUND) {
        // The photo pixel under the mask pixel's centre.
        let p = (2u * id.xy + 1u) * params.photo_size / (2u * params.mask_size);
        let colour = photo[p.y * params.photo_size.x + p.x];
        atomicAdd(&local[0], colour & 0xffu);
        atomicAdd(&local[1], (colour >> 8u) & 0xffu);
        atomicAdd(&local[2], (colour >> 16u) & 0xffu);
        atomicAdd(&local[3], 1u);
    }
    workgroupBarrier();
    if (lane == 0u) {
        atomicAdd(&sums.red, atomicLoad(&local[0]));
        atomicAdd(&sums.green, atomicLoad(&local[1]));
        atomicAdd(&sums.blue, atomicLoad(&local[2]));
        atomicAdd(&sums.count, atomicLoad(&local[3]));
    }
}

@compute @workgroup_size(1)
fn limiter_from_sums() {
    let count = atomicLoad(&sums.count);
    var key = vec3<f32>(0.0, 1.0, 0.0);
    if (count > 0u) {
        let sum = vec3<f32>(
            f32(atomicLoad(&sums.red)),
            f32(atomicLoad(&sums.green)),
            f32(atomicLoad(&sums.blue)),
        );
        let mean = sum / (f32(count) * 255.0);
        let spread = max(max(mean.r, mean.g), mean.b) - min(min(mean.r, mean.g), mean.b);
        if (spread >= MIN_CHROMA) {
            key = mean;
        }
    }
    // The limiter for `key`: for pure green the classic one (green down to the mean of red
    // and blue); for any other colour the same rule in its direction.
    let average = (key.r + key.g + key.b) / 3.0;
    let hi = max(max(key.r, key.g), key.b);
    let lo = min(min(key.r, key.g), key.b);
    limiter.weights = vec4<f32>((key - average) / (hi - average), 0.0);
    limiter.direction = vec4<f32>((key - lo) / (hi - lo), 0.0);
}
