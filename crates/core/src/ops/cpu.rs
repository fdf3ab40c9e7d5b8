//! CPU versions of the operations that sit between the model and the composite, for CPU
//! adapters (lavapipe), where running them as shaders costs several times more than plain
//! Rust over rayon's threads (see the README's numbers). They compute what their WGSL
//! versions compute (same taps and weights, same formulas, the same rounding to 8 bits);
//! where the CPU has a cheaper order of the same sums (resize weights pre-divided, sliding
//! box sums in the guided filter) it uses it, so both paths give the same pixels up to rare
//! one-level differences; `tests/edit_ops.rs` holds them to 1/255 of the shaders.

use image::RgbaImage;
use rayon::prelude::*;

use super::bbox::{CERTAIN, FOREGROUND};
use super::compose::spill_limiter;
use super::{ComposeLayers, ComposeStyle, Filter, MaskChannel, MaskStats, PlaceMap, Refinement};
use crate::error::Result;

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

/// The taps of one output position along an axis: first source index and weights, as
/// `shaders/resize.wgsl` computes them, normalised to sum to one and divided by 255 (so 8-bit
/// samples are weighed directly; the shader divides the sum instead: the same value up to
/// the last bit).
struct Taps {
    first: usize,
    weights: Vec<f32>,
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
            let weight_sum: f32 = weights.iter().sum();
            Taps {
                first: first as usize,
                weights: weights.iter().map(|w| w / weight_sum / 255.0).collect(),
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
                let source = &src_row[tap.first * 4..][..tap.weights.len() * 4];
                for (&w, sample) in tap.weights.iter().zip(source.chunks_exact(4)) {
                    for c in 0..4 {
                        sum[c] += w * sample[c] as f32;
                    }
                }
                for c in 0..4 {
                    pixel[c] = to_unorm8(sum[c]);
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
                    *s += w * v as f32;
                }
            }
            for (o, &s) in out_row.iter_mut().zip(&sum) {
                *o = to_unorm8(s);
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
        .for_each_init(Vec::new, |row, ((out_row, photo_row), &(y0, y1, fy))| {
            // Bilinear is separable: the row's coefficients between its two level rows
            // first, then each pixel between two of those.
            let upper = &coefficients[y0 * level_size.0..][..level_size.0];
            let lower = &coefficients[y1 * level_size.0..][..level_size.0];
            row.clear();
            row.extend(upper.iter().zip(lower).map(|(&u, &l)| mix(u, l, fy)));
            for ((out, pixel), &(x0, x1, fx)) in out_row
                .chunks_exact_mut(4)
                .zip(photo_row.chunks_exact(4))
                .zip(&columns)
            {
                let k = mix(row[x0], row[x1], fx);
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
/// pixels inside the image, as `box_pass` in `shaders/refine.wgsl` does; here with sliding
/// sums (each value added once and subtracted once instead of 2r+1 adds per output),
/// restarted every `RUN` outputs so f32 rounding cannot build up along a row or column.
fn box_mean<const N: usize>(
    values: &[[f32; N]],
    (width, height): (usize, usize),
    radius: usize,
) -> Vec<[f32; N]> {
    const RUN: usize = 64;
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
            for (run, outs) in out_row.chunks_mut(RUN).enumerate() {
                let mut window_sum = SlidingSum::new(1);
                for (i, out) in outs.iter_mut().enumerate() {
                    let (first, last) = window(run * RUN + i, width);
                    window_sum.slide(first, last, |i| std::slice::from_ref(&row[i]));
                    *out = window_sum.mean(0);
                }
            }
        });
    // Vertically in bands of `RUN` rows, each band starting its own window (in parallel).
    let mut vertical = vec![[0.0f32; N]; values.len()];
    vertical
        .par_chunks_mut(width * RUN)
        .enumerate()
        .for_each(|(band, out_rows)| {
            let mut window_sum = SlidingSum::new(width);
            for (i, out_row) in out_rows.chunks_exact_mut(width).enumerate() {
                let (first, last) = window(band * RUN + i, height);
                window_sum.slide(first, last, |y| &horizontal[y * width..][..width]);
                for (x, out) in out_row.iter_mut().enumerate() {
                    *out = window_sum.mean(x);
                }
            }
        });
    vertical
}

/// Sums of `lanes` values over a window `[first, last]` of items that only moves forward.
struct SlidingSum<const N: usize> {
    sums: Vec<[f32; N]>,
    /// The window summed: items `start..end`.
    start: usize,
    end: usize,
}

impl<const N: usize> SlidingSum<N> {
    fn new(lanes: usize) -> Self {
        Self {
            sums: vec![[0.0; N]; lanes],
            start: 0,
            end: 0,
        }
    }

    /// Moves the window to `[first, last]` (neither bound moving back); `item(i)` gives item
    /// `i`'s value for every lane.
    fn slide<'a>(&mut self, first: usize, last: usize, item: impl Fn(usize) -> &'a [[f32; N]]) {
        if self.start == self.end {
            (self.start, self.end) = (first, first);
        }
        while self.end <= last {
            for (sum, value) in self.sums.iter_mut().zip(item(self.end)) {
                for c in 0..N {
                    sum[c] += value[c];
                }
            }
            self.end += 1;
        }
        while self.start < first {
            for (sum, value) in self.sums.iter_mut().zip(item(self.start)) {
                for c in 0..N {
                    sum[c] -= value[c];
                }
            }
            self.start += 1;
        }
    }

    fn mean(&self, lane: usize) -> [f32; N] {
        let count = (self.end - self.start) as f32;
        self.sums[lane].map(|s| s / count)
    }
}

/// `shaders/bbox.wgsl` on the CPU: the box and counts of the foreground in `mask`'s
/// `channel` inside `roi` (`x0, y0, x1, y1` in pixels).
pub fn mask_stats(mask: &RgbaImage, channel: MaskChannel, roi: [f32; 4]) -> MaskStats {
    let channel = channel.index();
    let width = mask.width() as usize;
    let inside = |x: usize, y: usize| {
        let centre = [x as f32 + 0.5, y as f32 + 0.5];
        !(centre[0] < roi[0] || centre[1] < roi[1] || centre[0] > roi[2] || centre[1] > roi[3])
    };
    // Per row: [min x, max x + 1, foreground, uncertain]; rows without foreground are None.
    let rows: Vec<Option<[u32; 4]>> = mask
        .par_chunks_exact(width * 4)
        .enumerate()
        .map(|(y, row)| {
            let mut found: Option<[u32; 4]> = None;
            for (x, pixel) in row.chunks_exact(4).enumerate() {
                let m = unorm(pixel[channel]);
                if m < FOREGROUND || !inside(x, y) {
                    continue;
                }
                let stats = found.get_or_insert([x as u32, 0, 0, 0]);
                stats[1] = x as u32 + 1;
                stats[2] += 1;
                stats[3] += (m < CERTAIN) as u32;
            }
            found
        })
        .collect();
    let mut stats = MaskStats {
        bbox: None,
        foreground: 0,
        uncertain: 0,
    };
    for (y, row) in rows.iter().enumerate() {
        let Some([x0, x1, foreground, uncertain]) = *row else {
            continue;
        };
        let y = y as u32;
        stats.bbox = Some(match stats.bbox {
            None => [x0, y, x1, y + 1],
            Some([bx0, by0, bx1, _]) => [bx0.min(x0), by0, bx1.max(x1), y + 1],
        });
        stats.foreground += foreground;
        stats.uncertain += uncertain;
    }
    stats
}

/// `shaders/place.wgsl` on the CPU, with `ImageOps::place`'s Lanczos shrink first: `image`
/// and its `mask` (red channel; `None`: fully opaque) drawn onto a canvas through `map`,
/// returned as the canvas colour (alpha: frame coverage) and the canvas mask.
pub fn place(image: &RgbaImage, mask: Option<&RgbaImage>, map: PlaceMap) -> (RgbaImage, RgbaImage) {
    if let Some(([width, height], map)) = map.shrink(image.width(), image.height()) {
        let shrunk = resize(image, width, height, Filter::Lanczos3);
        let shrunk_mask = mask.map(|m| resize(m, width, height, Filter::Lanczos3));
        return place_sampled(&shrunk, shrunk_mask.as_ref(), map);
    }
    place_sampled(image, mask, map)
}

fn place_sampled(
    src: &RgbaImage,
    mask: Option<&RgbaImage>,
    map: PlaceMap,
) -> (RgbaImage, RgbaImage) {
    let [width, height] = map.canvas;
    let (src_w, src_h) = (src.width() as i32, src.height() as i32);
    let roi = map.roi;
    let index =
        |x: i32, y: i32| (y.clamp(0, src_h - 1) * src_w + x.clamp(0, src_w - 1)) as usize * 4;
    let texel = |x: i32, y: i32| {
        let at = index(x, y);
        let p = &src.as_raw()[at..at + 4];
        [unorm(p[0]), unorm(p[1]), unorm(p[2]), unorm(p[3])]
    };
    let mask_texel = |x: i32, y: i32| {
        let q = [x.clamp(0, src_w - 1), y.clamp(0, src_h - 1)];
        let centre = [q[0] as f32 + 0.5, q[1] as f32 + 0.5];
        if centre[0] < roi[0] || centre[1] < roi[1] || centre[0] > roi[2] || centre[1] > roi[3] {
            return 0.0;
        }
        match mask {
            None => 1.0,
            Some(mask) => unorm(mask.as_raw()[index(x, y)]),
        }
    };
    let coverage = |lo: f32, hi: f32, extent: f32| {
        (hi.min(extent) - lo.max(0.0)).clamp(0.0, hi - lo) / (hi - lo)
    };
    let mut colour = RgbaImage::new(width, height);
    let mut canvas_mask = RgbaImage::new(width, height);
    let row_bytes = width as usize * 4;
    colour
        .par_chunks_exact_mut(row_bytes)
        .zip(canvas_mask.par_chunks_exact_mut(row_bytes))
        .enumerate()
        .for_each(|(y, (colour_row, mask_row))| {
            let y = y as f32;
            let cover_y = coverage(
                (y - map.offset[1]) / map.scale,
                (y + 1.0 - map.offset[1]) / map.scale,
                src_h as f32,
            );
            let sy = (y + 0.5 - map.offset[1]) / map.scale - 0.5;
            let (base_y, ty) = (sy.floor(), sy - sy.floor());
            for (x, (out, out_mask)) in colour_row
                .chunks_exact_mut(4)
                .zip(mask_row.chunks_exact_mut(4))
                .enumerate()
            {
                let x = x as f32;
                let cover = coverage(
                    (x - map.offset[0]) / map.scale,
                    (x + 1.0 - map.offset[0]) / map.scale,
                    src_w as f32,
                ) * cover_y;
                if cover <= 0.0 {
                    continue;
                }
                let sx = (x + 0.5 - map.offset[0]) / map.scale - 0.5;
                let (base_x, tx) = (sx.floor(), sx - sx.floor());
                let (bx, by) = (base_x as i32, base_y as i32);
                let corners = [(bx, by), (bx + 1, by), (bx, by + 1), (bx + 1, by + 1)];
                let c = corners.map(|(x, y)| texel(x, y));
                let m = corners.map(|(x, y)| mask_texel(x, y));
                let w = [
                    (1.0 - tx) * (1.0 - ty),
                    tx * (1.0 - ty),
                    (1.0 - tx) * ty,
                    tx * ty,
                ];
                let a = [0, 1, 2, 3].map(|k| c[k][3] * w[k]);
                let alpha_sum = a[0] + a[1] + a[2] + a[3];
                let mut rgb = [0.0f32; 3];
                if alpha_sum > 0.0 {
                    rgb = [0, 1, 2].map(|ch| {
                        (c[0][ch] * a[0] + c[1][ch] * a[1] + c[2][ch] * a[2] + c[3][ch] * a[3])
                            / alpha_sum
                    });
                }
                let mask = (m[0] * w[0] + m[1] * w[1] + m[2] * w[2] + m[3] * w[3]) * alpha_sum;
                out.copy_from_slice(&[
                    to_unorm8(rgb[0]),
                    to_unorm8(rgb[1]),
                    to_unorm8(rgb[2]),
                    to_unorm8(cover * alpha_sum),
                ]);
                out_mask.copy_from_slice(&[to_unorm8(mask * cover), 0, 0, 255]);
            }
        });
    (colour, canvas_mask)
}

/// `shaders/compose.wgsl` on the CPU: background, shadow, outline, subject and watermark in
/// premultiplied alpha, written as straight RGBA8.
pub fn compose(layers: &ComposeLayers<RgbaImage>, style: ComposeStyle) -> Result<RgbaImage> {
    let (width, height) = layers.check_sizes(|image| image.dimensions())?;
    let (weights, direction) = style.despill.map_or(([0.0; 4], [0.0; 4]), spill_limiter);
    let premultiply = |c: [f32; 4]| [c[0] * c[3], c[1] * c[3], c[2] * c[3], c[3]];
    let over =
        |top: [f32; 4], below: [f32; 4]| [0, 1, 2, 3].map(|k| top[k] + below[k] * (1.0 - top[3]));
    let texel = |image: &RgbaImage, i: usize| {
        let p = &image.as_raw()[i * 4..i * 4 + 4];
        [unorm(p[0]), unorm(p[1]), unorm(p[2]), unorm(p[3])]
    };
    let background_color = premultiply(style.background_color);
    let matte = premultiply(style.matte);
    let mut out = RgbaImage::new(width, height);
    out.par_chunks_exact_mut(width as usize * 4)
        .enumerate()
        .for_each(|(y, row)| {
            for (x, dst) in row.chunks_exact_mut(4).enumerate() {
                let i = y * width as usize + x;
                let mut color = background_color;
                if let Some(background) = layers.background {
                    color = over(premultiply(texel(background, i)), color);
                }
                if let Some(shadow) = layers.shadow {
                    color = over([0.0, 0.0, 0.0, texel(shadow, i)[3]], color);
                }
                if let Some((band, outline)) = layers.outline {
                    let a = texel(band, i)[3] * outline[3];
                    color = over([outline[0] * a, outline[1] * a, outline[2] * a, a], color);
                }
                let pixel = texel(layers.subject, i);
                let spill = (pixel[0] * weights[0] + pixel[1] * weights[1] + pixel[2] * weights[2])
                    .max(0.0);
                let rgb = [0, 1, 2].map(|c| pixel[c] - spill * direction[c]);
                let alpha = texel(layers.subject_mask, i)[0];
                color = over(
                    [rgb[0] * alpha, rgb[1] * alpha, rgb[2] * alpha, alpha],
                    color,
                );
                if style.watermark {
                    let a = watermark_alpha(x, y);
                    color = over([a; 4], color);
                }
                if style.channels == 2 {
                    let v = to_unorm8(alpha);
                    dst.copy_from_slice(&[v, v, v, 255]);
                    continue;
                }
                if style.channels == 1 {
                    color = over(color, matte);
                }
                let straight = if color[3] > 0.0 {
                    [0, 1, 2].map(|c| color[c] / color[3])
                } else {
                    [0.0; 3]
                };
                dst.copy_from_slice(&[
                    to_unorm8(straight[0]),
                    to_unorm8(straight[1]),
                    to_unorm8(straight[2]),
                    to_unorm8(color[3]),
                ]);
            }
        });
    Ok(out)
}

/// `watermark_alpha` of `shaders/compose.wgsl`: diagonal translucent white stripes.
fn watermark_alpha(x: usize, y: usize) -> f32 {
    if (x + y) % 96 < 24 { 0.35 } else { 0.0 }
}

/// `shaders/spill.wgsl`'s key: the mean colour of `photo` where the model's `mask` (any
/// size, red channel) says background, when it is coloured enough to spill onto the subject
/// (grey, white and black backgrounds are not).
pub fn spill_colour(photo: &RgbaImage, mask: &RgbaImage) -> Option<[f32; 3]> {
    let (width, height) = (photo.width() as u64, photo.height() as u64);
    let (mask_width, mask_height) = (mask.width() as u64, mask.height() as u64);
    let mut sum = [0.0f64; 3];
    let mut count = 0u64;
    for (x, y, m) in mask.enumerate_pixels() {
        if m.0[0] < 13 {
            let px = (2 * x as u64 + 1) * width / (2 * mask_width);
            let py = (2 * y as u64 + 1) * height / (2 * mask_height);
            let pixel = photo.get_pixel(px as u32, py as u32).0;
            for c in 0..3 {
                sum[c] += pixel[c] as f64 / 255.0;
            }
            count += 1;
        }
    }
    if count == 0 {
        return None;
    }
    let mean = sum.map(|s| (s / count as f64) as f32);
    let max = mean.iter().copied().fold(0.0, f32::max);
    let min = mean.iter().copied().fold(1.0, f32::min);
    (max - min >= 0.15).then_some(mean)
}

#[cfg(test)]
mod tests {
    use super::box_mean;

    /// The sliding sums against each window's mean summed directly, on sizes smaller than,
    /// equal to and larger than the window, bands included (heights past 32 rows).
    #[test]
    fn box_mean_matches_the_direct_window_mean() {
        for (width, height, radius) in [(1, 1, 4), (3, 2, 4), (9, 9, 4), (17, 70, 4), (40, 33, 1)] {
            let values: Vec<[f32; 2]> = (0..width * height)
                .map(|i| [((i * 7919) % 101) as f32 / 10.0, -(((i * 31) % 17) as f32)])
                .collect();
            let got = box_mean(&values, (width, height), radius);
            for y in 0..height {
                for x in 0..width {
                    let (x0, x1) = (x.saturating_sub(radius), (x + radius).min(width - 1));
                    let (y0, y1) = (y.saturating_sub(radius), (y + radius).min(height - 1));
                    let mut sum = [0.0f64; 2];
                    for yy in y0..=y1 {
                        for xx in x0..=x1 {
                            for c in 0..2 {
                                sum[c] += values[yy * width + xx][c] as f64;
                            }
                        }
                    }
                    let count = ((x1 - x0 + 1) * (y1 - y0 + 1)) as f64;
                    for c in 0..2 {
                        let want = sum[c] / count;
                        let have = got[y * width + x][c] as f64;
                        assert!(
                            (have - want).abs() <= 1e-5 * want.abs().max(1.0),
                            "{width}x{height} r{radius} at ({x},{y}): {have} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
