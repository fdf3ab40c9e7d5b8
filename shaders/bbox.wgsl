// Measures a mask: the box of pixels at or above the foreground threshold, how many there
// are, and how many are uncertain (between the two thresholds). The mask is one channel of
// an RGBA8 image: red for a model's mask, alpha for a photo's own transparency.

struct Params {
    size: vec2<u32>,
    foreground: f32,
    certain: f32,
    // Only pixels inside this region (x0, y0, x1, y1) count.
    roi: vec4<f32>,
    // 0: red, 3: alpha.
    channel: u32,
}

struct Stats {
    min_x: atomic<u32>,
    min_y: atomic<u32>,
    max_x: atomic<u32>,
    max_y: atomic<u32>,
    foreground: atomic<u32>,
    uncertain: atomic<u32>,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> mask: array<u32>;
@group(0) @binding(2) var<storage, read_write> stats: Stats;

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= params.size.x || id.y >= params.size.y) {
        return;
    }
    let centre = vec2<f32>(id.xy) + 0.5;
    if (any(centre < params.roi.xy) || any(centre > params.roi.zw)) {
        return;
    }
    let m = unpack4x8unorm(mask[id.y * params.size.x + id.x])[params.channel];
    if (m < params.foreground) {
        return;
    }
    atomicMin(&stats.min_x, id.x);
    atomicMin(&stats.min_y, id.y);
    atomicMax(&stats.max_x, id.x + 1u);
    atomicMax(&stats.max_y, id.y + 1u);
    atomicAdd(&stats.foreground, 1u);
    if (m < params.certain) {
        atomicAdd(&stats.uncertain, 1u);
    }
}
