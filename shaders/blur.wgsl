// Normalised (weighted) blurs on vec4<f32> buffers holding (rgb * w, w): dividing by the
// blurred weight at the end means pixels with weight 0 (the subject, or outside the frame)
// contribute nothing, so the subject's colours never bleed into a blurred background.
// Large radii run on a box-downsampled level (`weigh` averages blocks), which keeps the cost
// per pixel bounded; `resolve` samples it back bilinearly.

struct Params {
    size: vec2<u32>,
    // Size of the full-resolution image (for `weigh` and `resolve`).
    full_size: vec2<u32>,
    // Gaussian sigma, or disc radius, in pixels of this level.
    radius: f32,
    // Integer downsampling factor between the full image and this level.
    factor: u32,
    // weigh: 0: w = alpha (plain premultiplied blur); 1: w = alpha, zero under the mask.
    // resolve: 0: alpha = blurred weight; 1: alpha = the original pixel's alpha.
    mode: u32,
    // Bokeh highlight bloom strength.
    bloom: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> packed: array<u32>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> dst_packed: array<u32>;

fn at(p: vec2<i32>) -> vec4<f32> {
    let q = clamp(p, vec2<i32>(0), vec2<i32>(params.size) - 1);
    return src[u32(q.y) * params.size.x + u32(q.x)];
}

fn weighted(i: u32) -> vec4<f32> {
    let pixel = unpack4x8unorm(packed[i]);
    var w = pixel.a;
    if (params.mode == 1u) {
        // Only clear background counts: the subject's soft edge mixes its colours in.
        w *= clamp(1.0 - 8.0 * unpack4x8unorm(mask[i]).r, 0.0, 1.0);
    }
    if (params.bloom > 0.0) {
        // Bright pixels weigh more, so highlights spread into bright discs.
        let luma = dot(pixel.rgb, vec3<f32>(0.2126, 0.7152, 0.0722));
        w *= 1.0 + params.bloom * max(luma - 0.75, 0.0) * 16.0;
    }
    return vec4<f32>(pixel.rgb * w, w);
}

// The weighted image, box-averaged over `factor`×`factor` blocks into this level.
@compute @workgroup_size(8, 8)
fn weigh(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= params.size.x || id.y >= params.size.y) {
        return;
    }
    var sum = vec4<f32>(0.0);
    var n = 0.0;
    for (var dy = 0u; dy < params.factor; dy++) {
        for (var dx = 0u; dx < params.factor; dx++) {
            let p = id.xy * params.factor + vec2<u32>(dx, dy);
            if (p.x < params.full_size.x && p.y < params.full_size.y) {
                sum += weighted(p.y * params.full_size.x + p.x);
                n += 1.0;
            }
        }
    }
    dst[id.y * params.size.x + id.x] = sum / max(n, 1.0);
}

fn gaussian(direction: vec2<i32>, id: vec2<u32>) {
    if (id.x >= params.size.x || id.y >= params.size.y) {
        return;
    }
    let sigma = max(params.radius, 1e-3);
    let taps = i32(ceil(3.0 * sigma));
    var sum = vec4<f32>(0.0);
    var norm = 0.0;
    for (var k = -taps; k <= taps; k++) {
        let g = exp(-f32(k * k) / (2.0 * sigma * sigma));
        sum += at(vec2<i32>(id) + direction * k) * g;
        norm += g;
    }
    dst[id.y * params.size.x + id.x] = sum / norm;
}

@compute @workgroup_size(8, 8)
fn horizontal(@builtin(global_invocation_id) id: vec3<u32>) {
    gaussian(vec2<i32>(1, 0), id.xy);
}

@compute @workgroup_size(8, 8)
fn vertical(@builtin(global_invocation_id) id: vec3<u32>) {
    gaussian(vec2<i32>(0, 1), id.xy);
}

// Bokeh: the average over a disc, with an antialiased rim.
@compute @workgroup_size(8, 8)
fn disc(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= params.size.x || id.y >= params.size.y) {
        return;
    }
    let r = max(params.radius, 0.5);
    let reach = i32(ceil(r));
    var sum = vec4<f32>(0.0);
    var norm = 0.0;
    for (var dy = -reach; dy <= reach; dy++) {
        for (var dx = -reach; dx <= reach; dx++) {
            let d = length(vec2<f32>(f32(dx), f32(dy)));
            let k = clamp(r + 0.5 - d, 0.0, 1.0);
            if (k > 0.0) {
                sum += at(vec2<i32>(id.xy) + vec2<i32>(dx, dy)) * k;
                norm += k;
            }
        }
    }
    dst[id.y * params.size.x + id.x] = sum / norm;
}

// Back to full resolution (bilinear from this level), dividing out the weight.
@compute @workgroup_size(8, 8)
fn resolve(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= params.full_size.x || id.y >= params.full_size.y) {
        return;
    }
    let i = id.y * params.full_size.x + id.x;
    let s = (vec2<f32>(id.xy) + 0.5) / f32(params.factor) - 0.5;
    let base = vec2<i32>(floor(s));
    let t = s - floor(s);
    let v = mix(
        mix(at(base), at(base + vec2<i32>(1, 0)), t.x),
        mix(at(base + vec2<i32>(0, 1)), at(base + vec2<i32>(1, 1)), t.x),
        t.y,
    );
    let original = unpack4x8unorm(packed[i]);
    var rgb = original.rgb;
    if (v.a > 1e-5) {
        rgb = v.rgb / v.a;
    }
    var alpha = min(v.a, 1.0);
    if (params.mode == 1u) {
        alpha = original.a;
    }
    dst_packed[i] = pack4x8unorm(vec4<f32>(rgb, alpha));
}
