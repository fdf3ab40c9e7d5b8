// Draws an image (and its mask) onto a canvas through a scale-and-offset map, sampling
// bilinearly: canvas = offset + source * scale. Writes the colour with alpha = how much of
// the pixel the source frame covers, and the mask separately. Pixels outside the region of
// interest get mask 0.

struct Params {
    src_size: vec2<u32>,
    dst_size: vec2<u32>,
    offset: vec2<f32>,
    scale: f32,
    // 0: the mask buffer holds the mask in its red channel; 1: no mask (fully opaque).
    opaque: u32,
    // Region of interest in source pixels: x0, y0, x1, y1.
    roi: vec4<f32>,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read> src_mask: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<u32>;
@group(0) @binding(4) var<storage, read_write> dst_mask: array<u32>;

fn texel(p: vec2<i32>) -> vec4<f32> {
    let q = clamp(p, vec2<i32>(0), vec2<i32>(params.src_size) - 1);
    return unpack4x8unorm(src[u32(q.y) * params.src_size.x + u32(q.x)]);
}

fn mask_texel(p: vec2<i32>) -> f32 {
    let q = clamp(p, vec2<i32>(0), vec2<i32>(params.src_size) - 1);
    let centre = vec2<f32>(q) + 0.5;
    if (any(centre < params.roi.xy) || any(centre > params.roi.zw)) {
        return 0.0;
    }
    if (params.opaque == 1u) {
        return 1.0;
    }
    return unpack4x8unorm(src_mask[u32(q.y) * params.src_size.x + u32(q.x)]).r;
}

// Share of the canvas pixel's row/column span covered by the source frame along one axis.
fn coverage(lo: f32, hi: f32, extent: f32) -> f32 {
    return clamp(min(hi, extent) - max(lo, 0.0), 0.0, hi - lo) / (hi - lo);
}

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= params.dst_size.x || id.y >= params.dst_size.y) {
        return;
    }
    let i = id.y * params.dst_size.x + id.x;
    let corner = (vec2<f32>(id.xy) - params.offset) / params.scale;
    let far = (vec2<f32>(id.xy) + 1.0 - params.offset) / params.scale;
    let extent = vec2<f32>(params.src_size);
    let cover = coverage(corner.x, far.x, extent.x) * coverage(corner.y, far.y, extent.y);
    if (cover <= 0.0) {
        dst[i] = 0u;
        dst_mask[i] = 0u;
        return;
    }
    // Bilinear sample at the canvas pixel centre, mapped into source pixel space.
    let s = (vec2<f32>(id.xy) + 0.5 - params.offset) / params.scale - 0.5;
    let base = vec2<i32>(floor(s));
    let t = s - floor(s);
    let c00 = texel(base);
    let c10 = texel(base + vec2<i32>(1, 0));
    let c01 = texel(base + vec2<i32>(0, 1));
    let c11 = texel(base + vec2<i32>(1, 1));
    let m00 = mask_texel(base);
    let m10 = mask_texel(base + vec2<i32>(1, 0));
    let m01 = mask_texel(base + vec2<i32>(0, 1));
    let m11 = mask_texel(base + vec2<i32>(1, 1));
    let w = vec4<f32>((1.0 - t.x) * (1.0 - t.y), t.x * (1.0 - t.y), (1.0 - t.x) * t.y, t.x * t.y);
    // Colours are weighted by their own alpha so transparent source pixels do not darken
    // their neighbours.
    let a = vec4<f32>(c00.a, c10.a, c01.a, c11.a) * w;
    let alpha_sum = a.x + a.y + a.z + a.w;
    var rgb = vec3<f32>(0.0);
    if (alpha_sum > 0.0) {
        rgb = (c00.rgb * a.x + c10.rgb * a.y + c01.rgb * a.z + c11.rgb * a.w) / alpha_sum;
    }
    let mask = dot(vec4<f32>(m00, m10, m01, m11), w) * alpha_sum;
    dst[i] = pack4x8unorm(vec4<f32>(rgb, cover * alpha_sum));
    dst_mask[i] = pack4x8unorm(vec4<f32>(mask * cover, 0.0, 0.0, 1.0));
}
