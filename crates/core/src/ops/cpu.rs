//! CPU versions of the operations that sit between the model and the composite, for CPU
//! adapters (lavapipe), where running them as shaders costs several times more than plain
//! Rust over rayon's threads (see the README's numbers). They reproduce their WGSL
//! versions' arithmetic step for step (same taps, same order, same f32 operations, the same
//! rounding to 8 bits), so both paths give the same pixels up to rare last-bit differences;
//! `tests/edit_ops.rs` holds them to 1/255 of the shaders.

use image::RgbaImage;
use rayon::prelude::*;

use super::{Filter, Refinement};

fn unorm(value: u8) -> f32 {
    value as f32 / 255.0
}

/// WGSL's `pack4x8unorm` for one channel: `floor(0.5 + v·255)`, where truncation is the
/// floor since the value is not negative (and needs no libm call).
fn to_unorm8(value: f32) -> u8 {
    (0.5 + value.clamp(0.0, 1.0) * 255.0) as u8
}

fn sinc(x: f32) -> f32 {
    if x.abs() < 1e-6 {
        return 1.0;
    }
    let px = std::f32::consts::PI * x;
    px.sin() / px
}

fn kernel(filter: Filter, x: f32) -> f32 {
    match filter {
        Filter::Bilinear => (1.0 - x.abs()).max(0.0),
        Filter::Lanczos3 if x.abs() >= 3.0 => 0.0,
        Filter::Lanczos3 => sinc(x) * sinc(x / 3.0),
    }
}

/// The taps of one output position along an axis: first source index and unnormalised
/// weights, as `shaders/resize.wgsl` computes them.
struct Taps {
    first: usize,
    weights: Vec<f32>,
    weight_sum: f32,
}

fn taps(src_len: u32, dst_len: u32, filter: Filter) -> Vec<Taps> {
    let scale = src_len as f32 / dst_len as f32;
    let stretch = scale.max(1.0);
    let support = match filter {
        Filter::Bilinear => 1.0,
        Filter::Lanczos3 => 3.0,
    };
    let radius = support * stretch;
    (0..dst_len)
        .map(|out| {
            let center = (out as f32 + 0.5) * scale;
            let first = ((center - radius + 0.5) as i32).max(0) as u32;
            let last = (((center + radius + 0.5) as i32).max(0) as u32).min(src_len);
            let weights: Vec<f32> = (first..last)
                .map(|i| kernel(filter, (i as f32 + 0.5 - center) / stretch))
                .collect();
            let weight_sum = weights.iter().sum();
            Taps {
                first: first as usize,
                weights,
                weight_sum,
            }
        })
        .collect()
}

/// `shaders/resize.wgsl` on the CPU: horizontal pass, then vertical, each rounding to 8
/// bits and skipped when its axis keeps its size.
pub fn resize(src: &RgbaImage, width: u32, height: u32, filter: Filter) -> RgbaImage {
    let horizontal = if src.width() == width {
        None
    } else {
        Some(resize_rows(src, width, filter))
    };
    let input = horizontal.as_ref().unwrap_or(src);
    if input.height() == height {
        return horizontal.unwrap_or_else(|| src.clone());
    }
    resize_columns(input, height, filter)
}

fn resize_rows(src: &RgbaImage, width: u32, filter: Filter) -> RgbaImage {
    let taps = taps(src.width(), width, filter);
    let src_row = src.width() as usize * 4;
    let mut out = RgbaImage::new(width, src.height());
    out.par_chunks_exact_mut(width as usize * 4)
        .zip(src.par_chunks_exact(src_row))
        .for_each(|(out_row, src_row)| {
            for (pixel, tap) in out_row.chunks_exact_mut(4).zip(&taps) {
                let mut sum = [0.0f32; 4];
                for (k, &w) in tap.weights.iter().enumerate() {
                    let at = (tap.first + k) * 4;
                    for c in 0..4 {
                        sum[c] += w * unorm(src_row[at + c]);
                    }
                }
                for c in 0..4 {
                    pixel[c] = to_unorm8(sum[c] / tap.weight_sum);
                }
            }
        });
    out
}

fn resize_columns(src: &RgbaImage, height: u32, filter: Filter) -> RgbaImage {
    let taps = taps(src.height(), height, filter);
    let row = src.width() as usize * 4;
    let raw = src.as_raw();
    let mut out = RgbaImage::new(src.width(), height);
    out.par_chunks_exact_mut(row)
        .zip(&taps)
        .for_each(|(out_row, tap)| {
            let mut sum = vec![0.0f32; row];
            for (k, &w) in tap.weights.iter().enumerate() {
                let src_row = &raw[(tap.first + k) * row..][..row];
                for (s, &v) in sum.iter_mut().zip(src_row) {
                    *s += w * unorm(v);
                }
            }
            for (o, s) in out_row.iter_mut().zip(&sum) {
                *o = to_unorm8(s / tap.weight_sum);
            }
        });
    out
}

/// `shaders/normalize.wgsl` on the CPU: the model's input planes (CHW f32) for one image,
/// scaled by its largest channel value, then `(x - mean) / std`.
pub fn normalize(image: &RgbaImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let max = image
        .pixels()
        .map(|p| p.0[0].max(p.0[1]).max(p.0[2]))
        .max()
        .unwrap_or(0);
    let scale = 1.0 / (max as f32).max(1e-6);
    let inv_std = std.map(|s| 1.0 / s);
    let count = image.pixels().len();
    let mut planes = vec![0.0f32; 3 * count];
    for (i, pixel) in image.pixels().enumerate() {
        for c in 0..3 {
            planes[c * count + i] = (pixel.0[c] as f32 * scale - mean[c]) * inv_std[c];
        }
    }
    planes
}

/// `shaders/refine.wgsl` on the CPU: `mask` (the model's, red channel) brought to `photo`'s
/// size by the fast colour guided filter, as grey RGBA with opaque alpha.
pub fn refine_mask(photo: &RgbaImage, mask: &RgbaImage, refinement: Refinement) -> RgbaImage {
    let (width, height) = photo.dimensions();
    let factor = width.max(height).div_ceil(refinement.level_side).max(1);
    let level = [width.div_ceil(factor), height.div_ceil(factor)];
    let guide = resize(photo, level[0], level[1], Filter::Lanczos3);
    let coarse = resize(mask, level[0], level[1], Filter::Lanczos3);
    let level_size = (level[0] as usize, level[1] as usize);
    let radius = refinement.radius as usize;

    // Per pixel: (I, p), (I·p, 0), (rr, rg, rb, gg), (gb, bb, 0, 0).
    let mut moments = vec![[0.0f32; 16]; level_size.0 * level_size.1];
    moments
        .par_iter_mut()
        .zip(guide.par_chunks_exact(4))
        .zip(coarse.par_chunks_exact(4))
        .for_each(|((m, g), p)| {
            let [r, g, b] = [unorm(g[0]), unorm(g[1]), unorm(g[2])];
            let p = unorm(p[0]);
            *m = [
                r,
                g,
                b,
                p,
                r * p,
                g * p,
                b * p,
                0.0,
                r * r,
                r * g,
                r * b,
                g * g,
                g * b,
                b * b,
                0.0,
                0.0,
            ];
        });
    let moments = box_mean(&moments, level_size, radius);

    let eps = refinement.eps;
    let coefficients: Vec<[f32; 4]> = moments
        .par_iter()
        .map(|m| {
            let mean_c = [m[0], m[1], m[2]];
            let mean_p = m[3];
            let cov = [0, 1, 2].map(|c| m[4 + c] - mean_c[c] * mean_p);
            let rr = m[8] - mean_c[0] * mean_c[0] + eps;
            let rg = m[9] - mean_c[0] * mean_c[1];
            let rb = m[10] - mean_c[0] * mean_c[2];
            let gg = m[11] - mean_c[1] * mean_c[1] + eps;
            let gb = m[12] - mean_c[1] * mean_c[2];
            let bb = m[13] - mean_c[2] * mean_c[2] + eps;
            let inv_rr = gg * bb - gb * gb;
            let inv_rg = rb * gb - rg * bb;
            let inv_rb = rg * gb - rb * gg;
            let inv_gg = rr * bb - rb * rb;
            let inv_gb = rb * rg - rr * gb;
            let inv_bb = rr * gg - rg * rg;
            let det = rr * inv_rr + rg * inv_rg + rb * inv_rb;
            let a = [
                (inv_rr * cov[0] + inv_rg * cov[1] + inv_rb * cov[2]) / det,
                (inv_rg * cov[0] + inv_gg * cov[1] + inv_gb * cov[2]) / det,
                (inv_rb * cov[0] + inv_gb * cov[1] + inv_bb * cov[2]) / det,
            ];
            let dot = a[0] * mean_c[0] + a[1] * mean_c[1] + a[2] * mean_c[2];
            [a[0], a[1], a[2], mean_p - dot]
        })
        .collect();
    let coefficients = box_mean(&coefficients, level_size, radius);

    // Where each output column and row samples the level: the two clamped neighbours and
    // the weight, worked out once instead of per pixel (same arithmetic as the shader's).
    let samples = |out_len: u32, level_len: usize| -> Vec<(usize, usize, f32)> {
        let scale = level_len as f32 / out_len as f32;
        (0..out_len)
            .map(|i| {
                let position = (i as f32 + 0.5) * scale - 0.5;
                let base = position.floor();
                let first = base as i32;
                let clamp = |v: i32| v.clamp(0, level_len as i32 - 1) as usize;
                (clamp(first), clamp(first + 1), position - base)
            })
            .collect()
    };
    let columns = samples(width, level_size.0);
    let rows = samples(height, level_size.1);
    let mix = |a: [f32; 4], b: [f32; 4], t: f32| [0, 1, 2, 3].map(|c| a[c] * (1.0 - t) + b[c] * t);
    let snap = refinement.snap;
    let mut refined = RgbaImage::new(width, height);
    refined
        .par_chunks_exact_mut(width as usize * 4)
        .zip(photo.par_chunks_exact(width as usize * 4))
        .zip(&rows)
        .for_each(|((out_row, photo_row), &(y0, y1, fy))| {
            let upper = &coefficients[y0 * level_size.0..][..level_size.0];
            let lower = &coefficients[y1 * level_size.0..][..level_size.0];
            for ((out, pixel), &(x0, x1, fx)) in out_row
                .chunks_exact_mut(4)
                .zip(photo_row.chunks_exact(4))
                .zip(&columns)
            {
                let top = mix(upper[x0], upper[x1], fx);
                let bottom = mix(lower[x0], lower[x1], fx);
                let k = mix(top, bottom, fy);
                let c = [unorm(pixel[0]), unorm(pixel[1]), unorm(pixel[2])];
                let value = k[0] * c[0] + k[1] * c[1] + k[2] * c[2] + k[3];
                let m = ((value - snap) / (1.0 - 2.0 * snap)).clamp(0.0, 1.0);
                let v = to_unorm8(m);
                out.copy_from_slice(&[v, v, v, 255]);
            }
        });
    refined
}

/// Each value replaced by the mean over its (2r+1)² window, counting only the window's
/// pixels inside the image: a horizontal pass, then a vertical one, each summing its taps in
/// order as `box_pass` in `shaders/refine.wgsl` does.
fn box_mean<const N: usize>(
    values: &[[f32; N]],
    (width, height): (usize, usize),
    radius: usize,
) -> Vec<[f32; N]> {
    let window = |position: usize, length: usize| {
        let first = position.saturating_sub(radius);
        let last = (position + radius).min(length - 1);
        (first, last)
    };
    let mut horizontal = vec![[0.0f32; N]; values.len()];
    horizontal
        .par_chunks_exact_mut(width)
        .zip(values.par_chunks_exact(width))
        .for_each(|(out_row, row)| {
            for (x, out) in out_row.iter_mut().enumerate() {
                let (first, last) = window(x, width);
                let mut sum = [0.0f32; N];
                for value in &row[first..=last] {
                    for c in 0..N {
                        sum[c] += value[c];
                    }
                }
                let count = (last - first + 1) as f32;
                *out = sum.map(|s| s / count);
            }
        });
    let mut vertical = vec![[0.0f32; N]; values.len()];
    vertical
        .par_chunks_exact_mut(width)
        .enumerate()
        .for_each(|(y, out_row)| {
            let (first, last) = window(y, height);
            let count = (last - first + 1) as f32;
            let mut sum = vec![[0.0f32; N]; width];
            for row in horizontal[first * width..(last + 1) * width].chunks_exact(width) {
                for (s, value) in sum.iter_mut().zip(row) {
                    for c in 0..N {
                        s[c] += value[c];
                    }
                }
            }
            for (out, s) in out_row.iter_mut().zip(&sum) {
                *out = s.map(|v| v / count);
            }
        });
    vertical
}
