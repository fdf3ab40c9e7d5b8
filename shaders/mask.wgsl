// The model's prediction for one image to its 8-bit mask, as rembg post-processes it:
// min-max normalise, then truncate to 8 bits. One workgroup per image: a min/max reduction,
// then every thread writes its share of the pixels (grey, opaque).

struct Params {
    count: u32,
    // Index of the image's first value in `prediction` (the binding may start earlier).
    base: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> prediction: array<f32>;
@group(0) @binding(2) var<storage, read_write> mask: array<u32>;

var<workgroup> lows: array<f32, 256>;
var<workgroup> highs: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) local: u32) {
    var low = 3.4e38;
    var high = -3.4e38;
    for (var i = local; i < params.count; i += 256u) {
        let v = prediction[params.base + i];
        low = min(low, v);
        high = max(high, v);
    }
    lows[local] = low;
    highs[local] = high;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if (local < stride) {
            lows[local] = min(lows[local], lows[local + stride]);
            highs[local] = max(highs[local], highs[local + stride]);
        }
        workgroupBarrier();
    }
    let minimum = lows[0];
    // f32::EPSILON, as the CPU path guards a constant prediction.
    let range = max(highs[0] - minimum, 1.1920929e-7);
    for (var i = local; i < params.count; i += 256u) {
        let v = min(u32((prediction[params.base + i] - minimum) / range * 255.0), 255u);
        mask[i] = v | (v << 8u) | (v << 16u) | (255u << 24u);
    }
}
