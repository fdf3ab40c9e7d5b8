//! U²-Net's 2×2 max-pooling and bilinear resizing on the CPU, used with `cpu_conv` when the
//! model runs on burn's flex backend. flex's general versions cost a quarter of a u2netp
//! forward once its convolutions were fast; these precompute the column taps once per call
//! and run plane by plane.

use rayon::prelude::*;

/// 2×2 max-pooling, stride 2, ceil mode (a last odd row or column pools what it has), over
/// `planes` planes of `[h, w]`. Returns the pooled planes and their size.
pub fn max_pool_2x2(input: &[f32], planes: usize, [h, w]: [usize; 2]) -> (Vec<f32>, [usize; 2]) {
    assert_eq!(input.len(), planes * h * w);
    let (oh, ow) = (h.div_ceil(2), w.div_ceil(2));
    let mut out = vec![0.0f32; planes * oh * ow];
    out.par_chunks_mut(oh * ow)
        .zip(input.par_chunks(h * w))
        .for_each(|(dst, src)| {
            for (y, line) in dst.chunks_exact_mut(ow).enumerate() {
                let top = &src[2 * y * w..][..w];
                let bottom = &src[(2 * y + 1).min(h - 1) * w..][..w];
                for (x, v) in line.iter_mut().enumerate() {
                    let (x0, x1) = (2 * x, (2 * x + 1).min(w - 1));
                    *v = top[x0].max(top[x1]).max(bottom[x0]).max(bottom[x1]);
                }
            }
        });
    (out, [oh, ow])
}

/// Bilinear resize with half-pixel centres (PyTorch `align_corners=False`, ONNX
/// `pytorch_half_pixel`), over `planes` planes of `[h, w]` to `[oh, ow]`.
pub fn resize_bilinear(
    input: &[f32],
    planes: usize,
    [h, w]: [usize; 2],
    [oh, ow]: [usize; 2],
) -> Vec<f32> {
    assert_eq!(input.len(), planes * h * w);
    let rows = taps(h, oh);
    let columns = taps(w, ow);
    let mut out = vec![0.0f32; planes * oh * ow];
    out.par_chunks_mut(oh * ow)
        .zip(input.par_chunks(h * w))
        .for_each(|(dst, src)| {
            for (line, &(y0, y1, fy)) in dst.chunks_exact_mut(ow).zip(&rows) {
                let (top, bottom) = (&src[y0 * w..][..w], &src[y1 * w..][..w]);
                for (v, &(x0, x1, fx)) in line.iter_mut().zip(&columns) {
                    let upper = top[x0] + (top[x1] - top[x0]) * fx;
                    let lower = bottom[x0] + (bottom[x1] - bottom[x0]) * fx;
                    *v = upper + (lower - upper) * fy;
                }
            }
        });
    out
}

/// For each output index: the two source indices and the weight of the second.
fn taps(from: usize, to: usize) -> Vec<(usize, usize, f32)> {
    let scale = from as f32 / to as f32;
    (0..to)
        .map(|i| {
            let source = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (source.floor() as usize).min(from - 1);
            let i1 = (i0 + 1).min(from - 1);
            (i0, i1, source - i0 as f32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::max_abs_diff;
    use burn::tensor::module::{interpolate, max_pool2d};
    use burn::tensor::ops::{InterpolateMode, InterpolateOptions, MaxPoolOptions};
    use burn::tensor::{Device, Tensor, TensorData};

    fn values(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919) % 613) as f32 / 306.0 - 1.0)
            .collect()
    }

    /// burn's own max-pool and interpolate (flex) are the reference.
    #[test]
    fn match_burns_pooling_and_interpolation() {
        let device = Device::flex();
        for [h, w] in [[20, 20], [7, 5], [1, 3], [10, 9]] {
            let input = values(3 * h * w);
            let tensor =
                || Tensor::<4>::from_data(TensorData::new(input.clone(), [1, 3, h, w]), &device);
            let (pooled, [ph, pw]) = max_pool_2x2(&input, 3, [h, w]);
            let reference = max_pool2d(tensor(), MaxPoolOptions::new([2, 2]).with_ceil_mode(true));
            assert_eq!(reference.dims(), [1, 3, ph, pw]);
            let reference = reference.into_data().try_to_vec::<f32>().unwrap();
            assert_eq!(max_abs_diff(&pooled, &reference), 0.0, "pool {h}x{w}");

            for size in [[2 * h, 2 * w], [h + 3, w + 1], [40, 40], [h, w]] {
                let resized = resize_bilinear(&input, 3, [h, w], size);
                let options = InterpolateOptions::new(InterpolateMode::Bilinear)
                    .with_align_corners(false)
                    .with_output_size(size);
                let reference = interpolate(tensor(), options)
                    .into_data()
                    .try_to_vec::<f32>();
                let error = max_abs_diff(&resized, &reference.unwrap());
                assert!(error < 1e-5, "resize {h}x{w} to {size:?}: off by {error}");
            }
        }
    }
}
