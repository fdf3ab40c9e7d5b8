// Applies a mask to an image: the mask (its red channel) becomes alpha, multiplied by any
// alpha the image already had, optionally composited over a background colour (straight
// alpha "over"). Mode 1 writes the mask itself as an opaque grey image; mode 2 writes the
// image's own alpha that way.

struct Params {
    pixel_count: u32,
    // 0: cut-out; 1: mask only; 2: the image's alpha as a mask.
    mode: u32,
    // Background colour, straight alpha in 0..1; alpha 0 keeps the result transparent.
    background: vec4<f32>,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> image: array<u32>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>,
        @builtin(num_workgroups) workgroups: vec3<u32>) {
    // Large images need a 2-D grid of workgroups; pixels are numbered row by row of it.
    let i = id.x + id.y * workgroups.x * 256u;
    if (i >= params.pixel_count) {
        return;
    }
    if (params.mode == 2u) {
        let a = unpack4x8unorm(image[i]).a;
        dst[i] = pack4x8unorm(vec4<f32>(a, a, a, 1.0));
        return;
    }
    let m = unpack4x8unorm(mask[i]).r;
    if (params.mode == 1u) {
        dst[i] = pack4x8unorm(vec4<f32>(m, m, m, 1.0));
        return;
    }
    let pixel = unpack4x8unorm(image[i]);
    let alpha = pixel.a * m;
    let bg = params.background;
    let out_alpha = alpha + bg.a * (1.0 - alpha);
    var rgb = pixel.rgb;
    if (out_alpha > 0.0 && bg.a > 0.0) {
        rgb = (pixel.rgb * alpha + bg.rgb * bg.a * (1.0 - alpha)) / out_alpha;
    }
    dst[i] = pack4x8unorm(vec4<f32>(rgb, out_alpha));
}
