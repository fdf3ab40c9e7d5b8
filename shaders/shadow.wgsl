// Shadows from the subject's mask on the canvas: `project` maps every canvas pixel back
// through an affine transform into the mask (squashed, sheared or shifted copies of the
// subject), `accumulate` lays a blurred projection over the shadow built so far.

struct Params {
    size: vec2<u32>,
    // Canvas point -> mask point: m = (a * x + b * y + c, d * x + e * y + f).
    row0: vec4<f32>,
    row1: vec4<f32>,
    opacity: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

fn mask_at(p: vec2<i32>) -> f32 {
    if (any(p < vec2<i32>(0)) || any(p >= vec2<i32>(params.size))) {
        return 0.0;
    }
    return unpack4x8unorm(src[u32(p.y) * params.size.x + u32(p.x)]).r;
}

@compute @workgroup_size(8, 8)
fn project(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= params.size.x || id.y >= params.size.y) {
        return;
    }
    let c = vec2<f32>(id.xy) + 0.5;
    let m = vec2<f32>(dot(params.row0.xyz, vec3<f32>(c, 1.0)), dot(params.row1.xyz, vec3<f32>(c, 1.0))) - 0.5;
    let base = vec2<i32>(floor(m));
    let t = m - floor(m);
    let v = mix(
        mix(mask_at(base), mask_at(base + vec2<i32>(1, 0)), t.x),
        mix(mask_at(base + vec2<i32>(0, 1)), mask_at(base + vec2<i32>(1, 1)), t.x),
        t.y,
    );
    dst[id.y * params.size.x + id.x] = pack4x8unorm(vec4<f32>(0.0, 0.0, 0.0, v));
}

@compute @workgroup_size(8, 8)
fn accumulate(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= params.size.x || id.y >= params.size.y) {
        return;
    }
    let i = id.y * params.size.x + id.x;
    let layer = unpack4x8unorm(src[i]).a * params.opacity;
    let below = unpack4x8unorm(dst[i]).a;
    dst[i] = pack4x8unorm(vec4<f32>(0.0, 0.0, 0.0, layer + below * (1.0 - layer)));
}
