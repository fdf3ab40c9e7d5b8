// The final picture, back to front in premultiplied alpha: background, shadow, outline,
// subject, watermark. Then the requested channels: RGBA, opaque RGB over a matte colour, or
// the subject's alpha alone.

struct Params {
    size: vec2<u32>,
    // 0: background colour only; 1: background buffer over the colour.
    background_mode: u32,
    // 0: RGBA; 1: opaque RGB over `matte`; 2: alpha as grey.
    channels: u32,
    background_color: vec4<f32>,
    outline_color: vec4<f32>,
    matte: vec4<f32>,
    shadow_on: u32,
    outline_on: u32,
    watermark: u32,
    _pad: u32,
}

// Spill removal: the subject loses max(0, rgb·weights) × direction (zero: off), written by
// the host for a known background colour or by `spill.wgsl` for a measured one.
struct Limiter {
    weights: vec4<f32>,
    direction: vec4<f32>,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> background: array<u32>;
@group(0) @binding(2) var<storage, read> shadow: array<u32>;
@group(0) @binding(3) var<storage, read> outline: array<u32>;
@group(0) @binding(4) var<storage, read> subject: array<u32>;
@group(0) @binding(5) var<storage, read> subject_mask: array<u32>;
@group(0) @binding(6) var<storage, read_write> dst: array<u32>;
@group(0) @binding(7) var<storage, read> spill: Limiter;

fn premultiply(c: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(c.rgb * c.a, c.a);
}

fn over(top: vec4<f32>, below: vec4<f32>) -> vec4<f32> {
    return top + below * (1.0 - top.a);
}

// Diagonal translucent white stripes, visible on any content.
fn watermark_alpha(p: vec2<u32>) -> f32 {
    let band = (p.x + p.y) % 96u;
    return select(0.0, 0.35, band < 24u);
}

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= params.size.x || id.y >= params.size.y) {
        return;
    }
    let i = id.y * params.size.x + id.x;
    var color = premultiply(params.background_color);
    if (params.background_mode == 1u) {
        color = over(premultiply(unpack4x8unorm(background[i])), color);
    }
    if (params.shadow_on == 1u) {
        color = over(vec4<f32>(0.0, 0.0, 0.0, unpack4x8unorm(shadow[i]).a), color);
    }
    if (params.outline_on == 1u) {
        let a = unpack4x8unorm(outline[i]).a * params.outline_color.a;
        color = over(vec4<f32>(params.outline_color.rgb * a, a), color);
    }
    var pixel = unpack4x8unorm(subject[i]);
    let spilled = max(0.0, dot(pixel.rgb, spill.weights.rgb));
    pixel = vec4<f32>(pixel.rgb - spilled * spill.direction.rgb, pixel.a);
    let subject_alpha = unpack4x8unorm(subject_mask[i]).r;
    color = over(vec4<f32>(pixel.rgb * subject_alpha, subject_alpha), color);
    if (params.watermark == 1u) {
        let a = watermark_alpha(id.xy);
        color = over(vec4<f32>(a, a, a, a), color);
    }
    if (params.channels == 2u) {
        dst[i] = pack4x8unorm(vec4<f32>(subject_alpha, subject_alpha, subject_alpha, 1.0));
        return;
    }
    if (params.channels == 1u) {
        color = over(color, premultiply(params.matte));
    }
    var rgb = vec3<f32>(0.0);
    if (color.a > 0.0) {
        rgb = color.rgb / color.a;
    }
    dst[i] = pack4x8unorm(vec4<f32>(rgb, color.a));
}
