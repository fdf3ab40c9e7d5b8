// Outline by jump flooding: every pixel finds (approximately) its nearest subject pixel in
// log2(width) passes, whatever the outline width, then the distance to it becomes an
// antialiased band of `width` pixels around the subject.

struct Params {
    size: vec2<u32>,
    // Jump length of this pass.
    step: u32,
    // Outline width in pixels.
    width: f32,
}

const NONE: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> mask: array<u32>;
@group(0) @binding(2) var<storage, read> seeds_in: array<u32>;
@group(0) @binding(3) var<storage, read_write> seeds_out: array<u32>;
@group(0) @binding(4) var<storage, read_write> band: array<u32>;

fn pack_xy(p: vec2<u32>) -> u32 {
    return p.x | (p.y << 16u);
}

fn unpack_xy(v: u32) -> vec2<f32> {
    return vec2<f32>(f32(v & 0xffffu), f32(v >> 16u));
}

@compute @workgroup_size(8, 8)
fn seed(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= params.size.x || id.y >= params.size.y) {
        return;
    }
    let i = id.y * params.size.x + id.x;
    let m = unpack4x8unorm(mask[i]).r;
    seeds_out[i] = select(NONE, pack_xy(id.xy), m >= 0.5);
}

@compute @workgroup_size(8, 8)
fn jump(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= params.size.x || id.y >= params.size.y) {
        return;
    }
    let here = vec2<f32>(id.xy);
    var best = seeds_in[id.y * params.size.x + id.x];
    var best_d = 1e20;
    if (best != NONE) {
        best_d = distance(here, unpack_xy(best));
    }
    let s = i32(params.step);
    for (var dy = -1; dy <= 1; dy++) {
        for (var dx = -1; dx <= 1; dx++) {
            let p = vec2<i32>(id.xy) + vec2<i32>(dx, dy) * s;
            if (any(p < vec2<i32>(0)) || any(p >= vec2<i32>(params.size))) {
                continue;
            }
            let candidate = seeds_in[u32(p.y) * params.size.x + u32(p.x)];
            if (candidate == NONE) {
                continue;
            }
            let d = distance(here, unpack_xy(candidate));
            if (d < best_d) {
                best_d = d;
                best = candidate;
            }
        }
    }
    seeds_out[id.y * params.size.x + id.x] = best;
}

@compute @workgroup_size(8, 8)
fn finish(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= params.size.x || id.y >= params.size.y) {
        return;
    }
    let i = id.y * params.size.x + id.x;
    let nearest = seeds_in[i];
    var coverage = 0.0;
    if (nearest != NONE) {
        // Seeds are pixel centres on the subject's side of the 0.5 contour, which lies about
        // half a pixel further out.
        let d = distance(vec2<f32>(id.xy), unpack_xy(nearest)) - 0.5;
        coverage = clamp(params.width - d + 0.5, 0.0, 1.0);
    }
    band[i] = pack4x8unorm(vec4<f32>(0.0, 0.0, 0.0, coverage));
}
