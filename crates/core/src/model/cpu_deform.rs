//! Modulated deformable convolution on the CPU (BiRefNet's ASPP branches), used when the
//! model runs on burn's flex backend.
//!
//! flex's `deform_conv2d` computes each sample's bilinear corners again for every input
//! channel, writes its column matrix one value per image-sized stride, and multiplies on one
//! thread; on BiRefNet-lite at 1024² its sampling alone was a fifth of the forward. Here the
//! offsets and the modulation are shared by all input channels (one offset group, as upstream
//! uses), so for a band of output rows each tap's corners and weights are computed once per
//! pixel, the sampled rows `[channel · taps + tap][pixel]` are written contiguously, in
//! parallel over channels, and the product with the weights is cutout's own convolution
//! kernel as a 1×1 convolution over `channels · taps` inputs (the weights' own order).

use rayon::prelude::*;

use super::cpu_conv::{PackedConv, Planes};

/// Sampled values held for one band of rows: enough rows to keep both cores busy, few enough
/// to stay in the last-level cache.
const BAND_BYTES: usize = 32 << 20;

/// A deformable convolution's weights, packed: stride 1, dilation 1, "same" padding.
#[derive(Debug)]
pub struct PackedDeformConv {
    /// The weights as a 1×1 convolution over `in_channels · size²` inputs.
    product: PackedConv,
    in_channels: usize,
    size: usize,
}

/// Where one sampled value comes from: four corners of the input plane and their bilinear
/// weights times the modulation (zero for corners outside the image).
#[derive(Clone, Copy, Default)]
struct Sample {
    corners: [u32; 4],
    weights: [f32; 4],
}

impl PackedDeformConv {
    /// `weight` is `[out, in, size, size]` (PyTorch order), `bias` one per output.
    pub fn new(weight: &[f32], [out, in_channels, size, size_w]: [usize; 4], bias: &[f32]) -> Self {
        assert_eq!(size, size_w, "square kernels");
        let product = PackedConv::new(weight, [out, in_channels * size * size, 1, 1], bias, 1);
        Self {
            product,
            in_channels,
            size,
        }
    }

    pub fn out_channels(&self) -> usize {
        self.product.out_channels()
    }

    /// Convolves `x` (`[batch, in, h, w]`) sampled at the taps moved by `offset`
    /// (`[batch, 2·size², h, w]`, (dy, dx) per tap) and weighted by `mask`
    /// (`[batch, size², h, w]`), as torchvision's `deform_conv2d` does: a sample outside
    /// the image by a pixel or more is zero, a corner outside it counts as zero. Returns
    /// `[batch, out, h, w]`.
    pub fn forward(
        &self,
        x: &[f32],
        offset: &[f32],
        mask: &[f32],
        batch: usize,
        [height, width]: [usize; 2],
    ) -> Vec<f32> {
        let row_bytes = self.in_channels * self.size * self.size * width * size_of::<f32>();
        let band = (BAND_BYTES / row_bytes.max(1))
            .max(1)
            .next_multiple_of(rayon::current_num_threads());
        self.forward_in_bands(x, offset, mask, batch, [height, width], band)
    }

    /// [`PackedDeformConv::forward`], `band` output rows at a time.
    fn forward_in_bands(
        &self,
        x: &[f32],
        offset: &[f32],
        mask: &[f32],
        batch: usize,
        [height, width]: [usize; 2],
        band: usize,
    ) -> Vec<f32> {
        let taps = self.size * self.size;
        let plane = height * width;
        let channels = self.in_channels;
        assert_eq!(x.len(), batch * channels * plane, "input");
        assert_eq!(offset.len(), batch * 2 * taps * plane, "offsets");
        assert_eq!(mask.len(), batch * taps * plane, "modulation");
        assert!(plane > 0 && plane <= u32::MAX as usize, "plane size");
        let out_channels = self.out_channels();
        let band = band.clamp(1, height);
        let mut out = vec![0.0f32; batch * out_channels * plane];
        let mut samples = Vec::new();
        let mut sampled = Vec::new();
        for n in 0..batch {
            let x = &x[n * channels * plane..][..channels * plane];
            let offset = &offset[n * 2 * taps * plane..][..2 * taps * plane];
            let mask = &mask[n * taps * plane..][..taps * plane];
            let out = &mut out[n * out_channels * plane..][..out_channels * plane];
            for y0 in (0..height).step_by(band) {
                let rows = band.min(height - y0);
                let pixels = rows * width;
                samples.clear();
                samples.resize(taps * pixels, Sample::default());
                samples
                    .par_chunks_mut(pixels)
                    .enumerate()
                    .for_each(|(tap, samples)| {
                        let [ky, kx] = [tap / self.size, tap % self.size];
                        let pad = (self.size / 2) as f32;
                        let dy = &offset[2 * tap * plane + y0 * width..][..pixels];
                        let dx = &offset[(2 * tap + 1) * plane + y0 * width..][..pixels];
                        let m = &mask[tap * plane + y0 * width..][..pixels];
                        for (p, sample) in samples.iter_mut().enumerate() {
                            let (y, x) = ((y0 + p / width) as f32, (p % width) as f32);
                            let sy = y - pad + ky as f32 + dy[p];
                            let sx = x - pad + kx as f32 + dx[p];
                            *sample = bilinear(sy, sx, [height, width], m[p]);
                        }
                    });
                sampled.resize(channels * taps * pixels, 0.0);
                sampled
                    .par_chunks_mut(taps * pixels)
                    .zip(x.par_chunks_exact(plane))
                    .for_each(|(rows, plane)| {
                        for (row, samples) in rows
                            .chunks_exact_mut(pixels)
                            .zip(samples.chunks_exact(pixels))
                        {
                            for (value, s) in row.iter_mut().zip(samples) {
                                let [a, b, c, d] = s.corners.map(|i| plane[i as usize]);
                                let [wa, wb, wc, wd] = s.weights;
                                *value = wa * a + wb * b + wc * c + wd * d;
                            }
                        }
                    });
                let part = self.product.forward(
                    &[Planes {
                        data: &sampled,
                        channels: channels * taps,
                    }],
                    1,
                    [rows, width],
                    false,
                );
                for (dst, src) in out.chunks_exact_mut(plane).zip(part.chunks_exact(pixels)) {
                    dst[y0 * width..][..pixels].copy_from_slice(src);
                }
            }
        }
        out
    }
}

/// torchvision's bilinear sample at (`y`, `x`), as corners and weights scaled by `scale`.
fn bilinear(y: f32, x: f32, [height, width]: [usize; 2], scale: f32) -> Sample {
    if y <= -1.0 || y >= height as f32 || x <= -1.0 || x >= width as f32 {
        return Sample::default();
    }
    let (y0, x0) = (y.floor(), x.floor());
    let (ly, lx) = (y - y0, x - x0);
    let (y0, x0) = (y0 as isize, x0 as isize);
    let mut sample = Sample::default();
    let corners = [(y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)];
    let weights = [
        (1.0 - ly) * (1.0 - lx),
        (1.0 - ly) * lx,
        ly * (1.0 - lx),
        ly * lx,
    ];
    for (k, ((cy, cx), w)) in corners.into_iter().zip(weights).enumerate() {
        if (0..height as isize).contains(&cy) && (0..width as isize).contains(&cx) {
            sample.corners[k] = (cy as usize * width + cx as usize) as u32;
            sample.weights[k] = w * scale;
        }
    }
    sample
}

#[cfg(test)]
mod tests {
    use burn::tensor::module::deform_conv2d;
    use burn::tensor::ops::DeformConvOptions;
    use burn::tensor::{Device, Tensor, TensorData};

    use super::PackedDeformConv;

    fn values(len: usize, seed: usize, scale: f32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i + seed) * 7919 % 1009) as f32 / 504.5 - 1.0) * scale)
            .collect()
    }

    /// cutout's kernel against flex's `deform_conv2d` (burn's reference implementation of
    /// torchvision's semantics) for each ASPP kernel size, with offsets of up to ±3 pixels so
    /// samples fall between pixels, across the border and wholly outside the image.
    #[test]
    fn matches_flexs_deformable_convolution() {
        let device = Device::flex();
        let (batch, channels, out, h, w) = (2, 5, 7, 9, 11);
        for size in [1, 3, 7] {
            let taps = size * size;
            let x = values(batch * channels * h * w, 1, 1.0);
            let weight = values(out * channels * taps, 2, 0.5);
            let bias = values(out, 3, 1.0);
            let offset = values(batch * 2 * taps * h * w, 4, 3.0);
            let mask = values(batch * taps * h * w, 5, 1.0)
                .into_iter()
                .map(|m| m + 1.0)
                .collect::<Vec<_>>();
            let tensor = |data: &[f32], shape: [usize; 4]| {
                Tensor::<4>::from_data(TensorData::new(data.to_vec(), shape), &device)
            };
            let pad = size / 2;
            let reference = deform_conv2d(
                tensor(&x, [batch, channels, h, w]),
                tensor(&offset, [batch, 2 * taps, h, w]),
                tensor(&weight, [out, channels, size, size]),
                Some(tensor(&mask, [batch, taps, h, w])),
                Some(Tensor::<1>::from_data(
                    TensorData::new(bias.clone(), [out]),
                    &device,
                )),
                DeformConvOptions::new([1, 1], [pad, pad], [1, 1], 1, 1),
            )
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
            let conv = PackedDeformConv::new(&weight, [out, channels, size, size], &bias);
            // Whole, and in bands of 2 rows (the last one shorter).
            for band in [h, 2] {
                let got = conv.forward_in_bands(&x, &offset, &mask, batch, [h, w], band);
                assert_eq!(got.len(), reference.len());
                let worst = got
                    .iter()
                    .zip(&reference)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(worst <= 1e-4, "{size}×{size}, bands of {band}: {worst}");
            }
            let spread = reference.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
            assert!(
                spread > 1.0,
                "{size}×{size}: the outputs are not trivially small"
            );
        }
    }
}
