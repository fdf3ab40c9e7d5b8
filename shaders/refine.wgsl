// Mask refinement: a fast colour guided filter (He & Sun, "Fast Guided Filter", 2015).
// The model's mask is coarse (320x320); the photo is sharp. On a reduced "level" of the
// photo, every window of (2r+1)^2 pixels fits the mask as a linear function of the colour,
// mask ≈ a·rgb + b (least squares, regularised by eps). The coefficients are averaged over
// the windows, upsampled, and applied to the full-resolution photo, so the mask's edge
// follows the colour edge the photo actually has.
//
// Entry points, in order: moments → box_horizontal → box_vertical (4 vectors per pixel) →
// coefficients → box_horizontal → box_vertical (1 vector) → apply.

struct Params {
    level: vec2<u32>,
    full: vec2<u32>,
    radius: i32,
    eps: f32,
    // vec4s per pixel in the box passes: 4 for the moments, 1 for the coefficients.
    vectors: u32,
    // Refined values within `snap` of 0 or 1 become 0 or 1: the model's faint haze away
    // from the subject, and its faint doubt inside it.
    snap: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
// The guide (the photo at the level's size in `moments`, at full size in `apply`), RGBA8.
@group(0) @binding(1) var<storage, read> guide: array<u32>;
// The coarse mask at the level's size, RGBA8 (red).
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> dst: array<vec4<f32>>;
// The refined mask at full size, RGBA8 grey.
@group(0) @binding(5) var<storage, read_write> refined: array<u32>;

fn inside_level(id: vec3<u32>) -> bool {
    return id.x < params.level.x && id.y < params.level.y;
}

// Per pixel: (I, p), (I·p, 0), (rr, rg, rb, gg), (gb, bb, 0, 0).
@compute @workgroup_size(8, 8)
fn moments(@builtin(global_invocation_id) id: vec3<u32>) {
    if (!inside_level(id)) {
        return;
    }
    let i = id.y * params.level.x + id.x;
    let c = unpack4x8unorm(guide[i]).rgb;
    let p = unpack4x8unorm(mask[i]).r;
    dst[4u * i] = vec4<f32>(c, p);
    dst[4u * i + 1u] = vec4<f32>(c * p, 0.0);
    dst[4u * i + 2u] = vec4<f32>(c.r * c.r, c.r * c.g, c.r * c.b, c.g * c.g);
    dst[4u * i + 3u] = vec4<f32>(c.g * c.b, c.b * c.b, 0.0, 0.0);
}

// Mean over the window along one axis, counting only pixels inside the level (so borders
// are not darkened).
fn box_pass(id: vec3<u32>, step: vec2<i32>) {
    if (!inside_level(id)) {
        return;
    }
    let size = vec2<i32>(params.level);
    let here = vec2<i32>(id.xy);
    let n = params.vectors;
    let axis_length = select(size.y, size.x, step.x == 1);
    let position = select(here.y, here.x, step.x == 1);
    let first = max(position - params.radius, 0);
    let last = min(position + params.radius, axis_length - 1);
    let count = f32(last - first + 1);
    let out = u32(here.y * size.x + here.x) * n;
    for (var v = 0u; v < n; v++) {
        var sum = vec4<f32>(0.0);
        for (var t = first; t <= last; t++) {
            let at = here + step * (t - position);
            sum += src[u32(at.y * size.x + at.x) * n + v];
        }
        dst[out + v] = sum / count;
    }
}

@compute @workgroup_size(8, 8)
fn box_horizontal(@builtin(global_invocation_id) id: vec3<u32>) {
    box_pass(id, vec2<i32>(1, 0));
}

@compute @workgroup_size(8, 8)
fn box_vertical(@builtin(global_invocation_id) id: vec3<u32>) {
    box_pass(id, vec2<i32>(0, 1));
}

// Solves (Σ + eps·I) a = cov(I, p) per window (3x3 symmetric, by the adjugate), b = p̄ - a·Ī.
@compute @workgroup_size(8, 8)
fn coefficients(@builtin(global_invocation_id) id: vec3<u32>) {
    if (!inside_level(id)) {
        return;
    }
    let i = id.y * params.level.x + id.x;
    let m0 = src[4u * i];
    let m1 = src[4u * i + 1u];
    let m2 = src[4u * i + 2u];
    let m3 = src[4u * i + 3u];
    let mean_c = m0.rgb;
    let mean_p = m0.a;
    let cov = m1.rgb - mean_c * mean_p;
    let e = params.eps;
    let rr = m2.x - mean_c.r * mean_c.r + e;
    let rg = m2.y - mean_c.r * mean_c.g;
    let rb = m2.z - mean_c.r * mean_c.b;
    let gg = m2.w - mean_c.g * mean_c.g + e;
    let gb = m3.x - mean_c.g * mean_c.b;
    let bb = m3.y - mean_c.b * mean_c.b + e;
    let inv_rr = gg * bb - gb * gb;
    let inv_rg = rb * gb - rg * bb;
    let inv_rb = rg * gb - rb * gg;
    let inv_gg = rr * bb - rb * rb;
    let inv_gb = rb * rg - rr * gb;
    let inv_bb = rr * gg - rg * rg;
    let det = rr * inv_rr + rg * inv_rg + rb * inv_rb;
    let a = vec3<f32>(
        inv_rr * cov.r + inv_rg * cov.g + inv_rb * cov.b,
        inv_rg * cov.r + inv_gg * cov.g + inv_gb * cov.b,
        inv_rb * cov.r + inv_gb * cov.g + inv_bb * cov.b,
    ) / det;
    dst[i] = vec4<f32>(a, mean_p - dot(a, mean_c));
}

fn coefficient_at(x: i32, y: i32) -> vec4<f32> {
    let size = vec2<i32>(params.level);
    let at = clamp(vec2<i32>(x, y), vec2<i32>(0), size - 1);
    return src[u32(at.y * size.x + at.x)];
}

// mask = ā·rgb + b̄ at full resolution, ā and b̄ sampled bilinearly from the level.
@compute @workgroup_size(8, 8)
fn apply(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= params.full.x || id.y >= params.full.y) {
        return;
    }
    let scale = vec2<f32>(params.level) / vec2<f32>(params.full);
    let position = (vec2<f32>(id.xy) + 0.5) * scale - 0.5;
    let base = floor(position);
    let f = position - base;
    let x = i32(base.x);
    let y = i32(base.y);
    let top = mix(coefficient_at(x, y), coefficient_at(x + 1, y), f.x);
    let bottom = mix(coefficient_at(x, y + 1), coefficient_at(x + 1, y + 1), f.x);
    let k = mix(top, bottom, f.y);
    let i = id.y * params.full.x + id.x;
    let c = unpack4x8unorm(guide[i]).rgb;
    let m = clamp((dot(k.rgb, c) + k.a - params.snap) / (1.0 - 2.0 * params.snap), 0.0, 1.0);
    refined[i] = pack4x8unorm(vec4<f32>(m, m, m, 1.0));
}
