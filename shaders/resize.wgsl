// Antialiased separable resize along one axis, RGBA8 packed in u32 to RGBA8 packed in u32.
// Like Pillow's resample: the kernel is stretched by the shrink factor when downscaling, so
// every source pixel contributes, and each pass rounds to 8 bits.

struct Params {
    src_width: u32,
    src_height: u32,
    dst_width: u32,
    dst_height: u32,
    // 0: resize the x axis (src_height == dst_height); 1: the y axis.
    axis: u32,
    // 0: bilinear (triangle, support 1); 1: Lanczos3 (support 3).
    kernel_type: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

const PI: f32 = 3.14159265358979;

fn sinc(x: f32) -> f32 {
    if (abs(x) < 1e-6) {
        return 1.0;
    }
    let px = PI * x;
    return sin(px) / px;
}

fn kernel(x: f32) -> f32 {
    if (params.kernel_type == 0u) {
        return max(0.0, 1.0 - abs(x));
    }
    if (abs(x) >= 3.0) {
        return 0.0;
    }
    return sinc(x) * sinc(x / 3.0);
}

fn support() -> f32 {
    return select(3.0, 1.0, params.kernel_type == 0u);
}

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= params.dst_width || id.y >= params.dst_height) {
        return;
    }
    let along_x = params.axis == 0u;
    let src_len = select(params.src_height, params.src_width, along_x);
    let dst_len = select(params.dst_height, params.dst_width, along_x);
    let out_pos = select(id.y, id.x, along_x);

    let scale = f32(src_len) / f32(dst_len);
    let stretch = max(scale, 1.0);
    let radius = support() * stretch;
    let center = (f32(out_pos) + 0.5) * scale;
    let first = u32(max(i32(center - radius + 0.5), 0));
    let last = min(u32(max(i32(center + radius + 0.5), 0)), src_len);

    var sum = vec4<f32>(0.0);
    var weight_sum = 0.0;
    for (var i = first; i < last; i++) {
        let w = kernel((f32(i) + 0.5 - center) / stretch);
        var index: u32;
        if (along_x) {
            index = id.y * params.src_width + i;
        } else {
            index = i * params.src_width + id.x;
        }
        sum += w * unpack4x8unorm(src[index]);
        weight_sum += w;
    }
    dst[id.y * params.dst_width + id.x] = pack4x8unorm(sum / weight_sum);
}
