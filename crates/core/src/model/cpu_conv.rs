//! Direct convolution on the CPU, used when the model runs on burn's flex backend.
//!
//! flex convolves by im2col + gemm. For U²-Net's 16–64-channel 3×3 convolutions that spends
//! more time building, converting and packing the column matrix than multiplying (perf: the
//! gemm microkernels are 36 % of a forward). This kernel reads a zero-padded copy of the input
//! in place instead. A register tile holds `BLOCK` output channels × `TILE` pixels of one
//! row; for every input channel and tap it loads the tile's pixels once and broadcasts one
//! weight per output channel, so each load feeds `BLOCK` multiply-adds. Bias and ReLU are
//! applied as the tile is stored, and inputs given in pieces (a decoder's upsampled features
//! and its skip) are concatenated while padding, so neither costs a pass of its own.

mod linear;
mod winograd;

pub use linear::{PackedLinear, gelu};

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// The register tile a CPU gets: `block` output channels × `tile` pixels of one row, sized so
/// the accumulators, the loaded pixels and one broadcast weight fit its vector registers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kernel {
    /// 32 zmm registers: 8 channels × 2 vectors of 16 = 16 accumulators.
    Avx512,
    /// 16 ymm registers: 6 channels × 2 vectors of 8 = 12 accumulators.
    Avx2,
    /// Plain Rust in the AVX2 kernel's shape, for other CPUs.
    Portable,
}

/// The largest `block × tile` of any kernel.
const MAX_TILE_VALUES: usize = 8 * 32;

impl Kernel {
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Self::Avx2;
            }
        }
        Self::Portable
    }

    /// Every kernel this CPU can run.
    pub fn available() -> Vec<Self> {
        [Self::Avx512, Self::Avx2, Self::Portable]
            .into_iter()
            .filter(|k| k.is_supported())
            .collect()
    }

    /// Whether this CPU has the instructions the kernel is compiled with (its
    /// `target_feature`s below).
    fn is_supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Self::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
                Self::Avx2 => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                }
                Self::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Self::Portable
        }
    }

    fn block(self) -> usize {
        match self {
            Self::Avx512 => 8,
            Self::Avx2 | Self::Portable => 6,
        }
    }

    fn tile(self) -> usize {
        match self {
            Self::Avx512 => 32,
            Self::Avx2 | Self::Portable => 16,
        }
    }
}

/// Input channels summed in one run of FMAs before the runs are added. One run over
/// thousands of channels × taps (BiRefNet's 3072-channel patch input) loses precision: on
/// BiRefNet-lite with random weights the logits strayed from the float64 result by 1.2e-3 on
/// average, PyTorch's float32 by 3.6e-4; in runs of 64 channels (as a blocked GEMM sums)
/// cutout's stray by 4.1e-4. Convolutions with ≤ 64 input channels are unchanged.
const CHANNELS_PER_SUM: usize = 64;

/// A convolution's weights, packed for the kernel: stride 1, "same" zero padding.
#[derive(Debug)]
pub struct PackedConv {
    kernel: Kernel,
    in_channels: usize,
    out_channels: usize,
    size: usize,
    dilation: usize,
    /// `[output block][input channel][tap][block lane]`, zero past the last output channel.
    weights: Vec<f32>,
    /// For 3×3 kernels at dilation 1 with channels enough, the weights transformed for
    /// Winograd (`winograd.rs`).
    winograd: Option<Vec<f32>>,
    bias: Vec<f32>,
}

/// Some input channels for every image of a batch: contiguous `[batch, channels, h, w]`.
pub struct Planes<'a> {
    pub data: &'a [f32],
    pub channels: usize,
}

impl PackedConv {
    /// `weight` is `[out, in, size, size]` (ONNX / PyTorch order), `bias` one per output.
    pub fn new(weight: &[f32], shape: [usize; 4], bias: &[f32], dilation: usize) -> Self {
        Self::for_kernel(Kernel::detect(), weight, shape, bias, dilation)
            .expect("the detected kernel is supported")
    }

    /// As [`PackedConv::new`] with a kernel of the caller's choice (tests and benches compare
    /// them); `None` when this CPU lacks the kernel's instructions, since running it would be
    /// undefined behaviour.
    pub fn for_kernel(
        kernel: Kernel,
        weight: &[f32],
        shape: [usize; 4],
        bias: &[f32],
        dilation: usize,
    ) -> Option<Self> {
        if !kernel.is_supported() {
            return None;
        }
        let [out_channels, in_channels, size, size_w] = shape;
        assert_eq!(size, size_w, "square kernels");
        assert_eq!(weight.len(), shape.iter().product::<usize>());
        assert_eq!(bias.len(), out_channels);
        let taps = size * size;
        let block = kernel.block();
        let blocks = out_channels.div_ceil(block);
        let mut weights = vec![0.0; blocks * in_channels * taps * block];
        for o in 0..out_channels {
            let (b, lane) = (o / block, o % block);
            for i in 0..in_channels {
                for t in 0..taps {
                    weights[((b * in_channels + i) * taps + t) * block + lane] =
                        weight[(o * in_channels + i) * taps + t];
                }
            }
        }
        let winograd = (size == 3 && dilation == 1 && winograd::suits([in_channels, out_channels]))
            .then(|| winograd::transform_weights(weight, [out_channels, in_channels], block));
        Some(Self {
            kernel,
            in_channels,
            out_channels,
            size,
            dilation,
            weights,
            winograd,
            bias: bias.to_vec(),
        })
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// The same convolution without Winograd, always by the direct kernel (benches compare
    /// the two).
    pub fn without_winograd(self) -> Self {
        Self {
            winograd: None,
            ..self
        }
    }

    /// Convolves `batch` images whose channels arrive in `parts`, concatenated in order,
    /// returning NCHW output, optionally through ReLU.
    pub fn forward(
        &self,
        parts: &[Planes],
        batch: usize,
        [height, width]: [usize; 2],
        relu: bool,
    ) -> Vec<f32> {
        let in_channels: usize = parts.iter().map(|p| p.channels).sum();
        assert_eq!(in_channels, self.in_channels, "input channels");
        for part in parts {
            assert_eq!(part.data.len(), batch * part.channels * height * width);
        }
        if let Some(weights) = &self.winograd
            && winograd::fills(width, self.kernel.tile())
        {
            return self.forward_winograd(weights, parts, batch, [height, width], relu);
        }
        self.forward_direct(parts, batch, [height, width], relu)
    }

    /// [`PackedConv::forward`] by the direct kernel, for any size and dilation.
    fn forward_direct(
        &self,
        parts: &[Planes],
        batch: usize,
        [height, width]: [usize; 2],
        relu: bool,
    ) -> Vec<f32> {
        let in_channels = self.in_channels;
        let (block, tile_width) = (self.kernel.block(), self.kernel.tile());
        let pad = self.dilation * (self.size - 1) / 2;
        // Padded rows are whole tiles wide (plus the border) so no tile reads out of bounds.
        let row = width.div_ceil(tile_width) * tile_width + 2 * pad;
        let plane = (height + 2 * pad) * row;
        let padded = self.pad(parts, batch, [height, width], pad, row, plane);
        let taps: Vec<usize> = (0..self.size)
            .flat_map(|ky| (0..self.size).map(move |kx| (ky * row + kx) * self.dilation))
            .collect();
        let reach = (in_channels - 1) * plane + taps.iter().max().expect("a tap") + tile_width;

        let len = batch * self.out_channels * height * width;
        let mut out = Vec::<f32>::with_capacity(len);
        // One job per output row. A job walks its row tile by tile and, per tile, runs every
        // block of output channels, so the tile's input is loaded from L2 once and then
        // reused from L1 by all blocks and taps.
        let out_ptr = SharedOut(out.as_mut_ptr());
        let weights_per_block = in_channels * taps.len() * block;
        let chunk_weights = CHANNELS_PER_SUM * taps.len() * block;
        (0..batch * height).into_par_iter().for_each(|job| {
            // The sum of the channel runs after the first (see `CHANNELS_PER_SUM`).
            let (n, y) = (job / height, job % height);
            let image_in = &padded[n * in_channels * plane..][..in_channels * plane];
            for x0 in (0..width).step_by(tile_width) {
                let len = tile_width.min(width - x0);
                let input = &image_in[y * row + x0..];
                assert!(input.len() >= reach, "tiles read inside the padded input");
                for (b, weights) in self.weights.chunks_exact(weights_per_block).enumerate() {
                    let mut tile = [0.0f32; MAX_TILE_VALUES];
                    for (chunk, weights) in weights.chunks(chunk_weights).enumerate() {
                        let input = &input[chunk * CHANNELS_PER_SUM * plane..];
                        // SAFETY: `kernel` is one this CPU has (`detect`, or a test's choice
                        // from `available`); the input reach is checked above (a chunk
                        // starting `chunk · CHANNELS_PER_SUM` planes in reaches no further),
                        // and the weights chunk is whole channels of `taps · block`.
                        unsafe {
                            accumulate_tile(
                                self.kernel,
                                input,
                                plane,
                                &taps,
                                weights,
                                &mut tile,
                                chunk > 0,
                            )
                        };
                    }
                    for lane in 0..block.min(self.out_channels - b * block) {
                        let o = b * block + lane;
                        let bias = self.bias[o];
                        let start = ((n * self.out_channels + o) * height + y) * width + x0;
                        let values = &tile[lane * tile_width..][..len];
                        // SAFETY: (n, o, y, x0..x0 + len) is inside the output, and only this
                        // job writes row y of image n.
                        let dst = unsafe { out_ptr.uninit(start, len) };
                        if relu {
                            for (d, &v) in dst.iter_mut().zip(values) {
                                d.write((v + bias).max(0.0));
                            }
                        } else {
                            for (d, &v) in dst.iter_mut().zip(values) {
                                d.write(v + bias);
                            }
                        }
                    }
                }
            }
        });
        // SAFETY: the jobs above wrote every (image, channel, row, column) of the output.
        unsafe { out.set_len(len) };
        out
    }
    /// `[batch][channel]` planes of `(height + 2·pad) × row`, zero outside the image.
    fn pad(
        &self,
        parts: &[Planes],
        batch: usize,
        [height, width]: [usize; 2],
        pad: usize,
        row: usize,
        plane: usize,
    ) -> Vec<f32> {
        let mut padded = vec![0.0f32; batch * self.in_channels * plane];
        let sources = channel_planes(parts, batch, [height, width]);
        padded
            .par_chunks_mut(plane)
            .zip(sources.par_iter())
            .for_each(|(dst, src)| {
                for (y, line) in src.chunks_exact(width).enumerate() {
                    dst[(y + pad) * row + pad..][..width].copy_from_slice(line);
                }
            });
        padded
    }
}

/// Every (image, input channel) plane of `height × width`, `parts` concatenated in order.
fn channel_planes<'a>(
    parts: &[Planes<'a>],
    batch: usize,
    [height, width]: [usize; 2],
) -> Vec<&'a [f32]> {
    (0..batch)
        .flat_map(|n| {
            parts.iter().flat_map(move |part| {
                part.data[n * part.channels * height * width..][..part.channels * height * width]
                    .chunks_exact(height * width)
            })
        })
        .collect()
}

/// The output buffer, shared by jobs that write disjoint rows of it.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: the pointer is only dereferenced through `uninit`, whose callers (the jobs of one
// `forward`) write disjoint ranges of a buffer that outlives them: `forward` owns it and
// joins every job before reading it, so sending or sharing the pointer across the rayon
// threads creates no aliasing and no dangling access.
unsafe impl Send for SharedOut {}
// SAFETY: as for `Send`: shared references only copy the pointer; writes stay disjoint.
unsafe impl Sync for SharedOut {}
impl SharedOut {
    /// `len` values from `i` on, to be written.
    ///
    /// # Safety
    /// `i..i + len` must be inside the buffer, and no other job may touch it.
    unsafe fn uninit<'a>(self, i: usize, len: usize) -> &'a mut [MaybeUninit<f32>] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(i).cast(), len) }
    }
}

/// `tile[lane · tile + x] = Σ_channel Σ_tap input[channel·plane + tap + x] ·
/// weights[(channel·taps + tap)·block + lane]`, for the kernel's block and tile; with `add`,
/// that sum (made on its own from zero, see [`CHANNELS_PER_SUM`]) is added to `tile`'s values.
///
/// # Safety
/// `kernel` must be one this CPU supports; `input` must hold `(channels-1)·plane + max(taps)
/// + tile` values and `weights` exactly `channels · taps · block`.
unsafe fn accumulate_tile(
    kernel: Kernel,
    input: &[f32],
    plane: usize,
    taps: &[usize],
    weights: &[f32],
    tile: &mut [f32; MAX_TILE_VALUES],
    add: bool,
) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { x86::accumulate_avx512(input, plane, taps, weights, tile, add) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { x86::accumulate_avx2(input, plane, taps, weights, tile, add) },
        _ => accumulate_portable::<6, 16>(input, plane, taps, weights, tile, add),
    }
}

fn accumulate_portable<const BLOCK: usize, const TILE: usize>(
    input: &[f32],
    plane: usize,
    taps: &[usize],
    weights: &[f32],
    tile: &mut [f32; MAX_TILE_VALUES],
    add: bool,
) {
    let mut acc = [[0.0f32; TILE]; BLOCK];
    for (channel, weights) in weights.chunks_exact(taps.len() * BLOCK).enumerate() {
        for (&tap, w) in taps.iter().zip(weights.chunks_exact(BLOCK)) {
            let pixels = &input[channel * plane + tap..][..TILE];
            for (lane, acc) in acc.iter_mut().enumerate() {
                for (a, &p) in acc.iter_mut().zip(pixels) {
                    *a = p.mul_add(w[lane], *a);
                }
            }
        }
    }
    for (lane, acc) in acc.iter().enumerate() {
        let out = &mut tile[lane * TILE..][..TILE];
        if add {
            for (o, &a) in out.iter_mut().zip(acc) {
                *o += a;
            }
        } else {
            out.copy_from_slice(acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::MAX_TILE_VALUES;
    use std::arch::x86_64::*;

    /// 8 output channels × 32 pixels in 16 zmm accumulators.
    ///
    /// # Safety
    /// Needs AVX-512F; bounds as `super::accumulate_tile`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn accumulate_avx512(
        input: &[f32],
        plane: usize,
        taps: &[usize],
        weights: &[f32],
        tile: &mut [f32; MAX_TILE_VALUES],
        add: bool,
    ) {
        const BLOCK: usize = 8;
        let mut acc = [[_mm512_setzero_ps(); 2]; BLOCK];
        let mut w = weights.as_ptr();
        let channels = weights.len() / (taps.len() * BLOCK);
        for c in 0..channels {
            let channel = unsafe { input.as_ptr().add(c * plane) };
            for &tap in taps {
                let p = unsafe { channel.add(tap) };
                let pixels = unsafe { [_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))] };
                for (lane, acc) in acc.iter_mut().enumerate() {
                    let wv = _mm512_set1_ps(unsafe { *w.add(lane) });
                    acc[0] = _mm512_fmadd_ps(pixels[0], wv, acc[0]);
                    acc[1] = _mm512_fmadd_ps(pixels[1], wv, acc[1]);
                }
                w = unsafe { w.add(BLOCK) };
            }
        }
        for (lane, acc) in acc.iter_mut().enumerate() {
            let out = tile[lane * 32..].as_mut_ptr();
            unsafe {
                if add {
                    acc[0] = _mm512_add_ps(acc[0], _mm512_loadu_ps(out));
                    acc[1] = _mm512_add_ps(acc[1], _mm512_loadu_ps(out.add(16)));
                }
                _mm512_storeu_ps(out, acc[0]);
                _mm512_storeu_ps(out.add(16), acc[1]);
            }
        }
    }

    /// 6 output channels × 16 pixels in 12 ymm accumulators.
    ///
    /// # Safety
    /// Needs AVX2 and FMA; bounds as `super::accumulate_tile`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn accumulate_avx2(
        input: &[f32],
        plane: usize,
        taps: &[usize],
        weights: &[f32],
        tile: &mut [f32; MAX_TILE_VALUES],
        add: bool,
    ) {
        const BLOCK: usize = 6;
        let mut acc = [[_mm256_setzero_ps(); 2]; BLOCK];
        let mut w = weights.as_ptr();
        let channels = weights.len() / (taps.len() * BLOCK);
        for c in 0..channels {
            let channel = unsafe { input.as_ptr().add(c * plane) };
            for &tap in taps {
                let p = unsafe { channel.add(tap) };
                let pixels = unsafe { [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))] };
                for (lane, acc) in acc.iter_mut().enumerate() {
                    let wv = unsafe { _mm256_broadcast_ss(&*w.add(lane)) };
                    acc[0] = _mm256_fmadd_ps(pixels[0], wv, acc[0]);
                    acc[1] = _mm256_fmadd_ps(pixels[1], wv, acc[1]);
                }
                w = unsafe { w.add(BLOCK) };
            }
        }
        for (lane, acc) in acc.iter_mut().enumerate() {
            let out = tile[lane * 16..].as_mut_ptr();
            unsafe {
                if add {
                    acc[0] = _mm256_add_ps(acc[0], _mm256_loadu_ps(out));
                    acc[1] = _mm256_add_ps(acc[1], _mm256_loadu_ps(out.add(8)));
                }
                _mm256_storeu_ps(out, acc[0]);
                _mm256_storeu_ps(out.add(8), acc[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::max_abs_diff;

    /// Textbook convolution in f64: the reference every kernel must match.
    fn reference(
        input: &[f32],
        [batch, cin, h, w]: [usize; 4],
        weight: &[f32],
        [cout, k]: [usize; 2],
        bias: &[f32],
        dilation: usize,
        relu: bool,
    ) -> Vec<f32> {
        let pad = (dilation * (k - 1) / 2) as isize;
        let mut out = vec![0.0; batch * cout * h * w];
        for n in 0..batch {
            for o in 0..cout {
                for y in 0..h {
                    for x in 0..w {
                        let mut sum = bias[o] as f64;
                        for i in 0..cin {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let sy = y as isize + (ky * dilation) as isize - pad;
                                    let sx = x as isize + (kx * dilation) as isize - pad;
                                    if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                                        continue;
                                    }
                                    let v =
                                        input[((n * cin + i) * h + sy as usize) * w + sx as usize];
                                    sum +=
                                        v as f64 * weight[((o * cin + i) * k + ky) * k + kx] as f64;
                                }
                            }
                        }
                        let sum = sum as f32;
                        out[((n * cout + o) * h + y) * w + x] =
                            if relu { sum.max(0.0) } else { sum };
                    }
                }
            }
        }
        out
    }

    /// Deterministic values in [-1, 1].
    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// One case: `cin` channels arriving in two parts (the second may be empty).
    fn check(
        kernel: Kernel,
        batch: usize,
        cin: [usize; 2],
        [cout, k]: [usize; 2],
        size: [usize; 2],
        d: usize,
    ) {
        let [h, w] = size;
        let total_in = cin[0] + cin[1];
        let parts: Vec<Vec<f32>> = cin
            .iter()
            .enumerate()
            .map(|(i, &c)| values(batch * c * h * w, 7 + i as u32))
            .collect();
        let mut joined = Vec::new();
        for n in 0..batch {
            for (part, &c) in parts.iter().zip(&cin) {
                joined.extend_from_slice(&part[n * c * h * w..][..c * h * w]);
            }
        }
        let weight = values(cout * total_in * k * k, 3);
        let bias = values(cout, 5);
        let conv =
            PackedConv::for_kernel(kernel, &weight, [cout, total_in, k, k], &bias, d).unwrap();
        let planes: Vec<Planes> = parts
            .iter()
            .zip(&cin)
            .filter(|(_, c)| **c > 0)
            .map(|(data, &channels)| Planes { data, channels })
            .collect();
        for relu in [false, true] {
            let mut runs = vec![
                ("chosen", conv.forward(&planes, batch, size, relu)),
                ("direct", conv.forward_direct(&planes, batch, size, relu)),
            ];
            if let Some(weights) = &conv.winograd {
                let winograd = conv.forward_winograd(weights, &planes, batch, size, relu);
                runs.push(("winograd", winograd));
            }
            let want = reference(
                &joined,
                [batch, total_in, h, w],
                &weight,
                [cout, k],
                &bias,
                d,
                relu,
            );
            for (method, got) in runs {
                let worst = max_abs_diff(&got, &want);
                assert!(
                    worst < 1e-5 * (total_in * k * k) as f32,
                    "{kernel:?} {method}: batch {batch}, in {cin:?}, out {cout}, {k}x{k}, \
                     {h}x{w}, dilation {d}: off by {worst}"
                );
            }
        }
    }

    #[test]
    fn every_kernel_matches_the_textbook_convolution() {
        for kernel in Kernel::available() {
            check(kernel, 1, [3, 0], [16, 3], [17, 30], 1);
            check(kernel, 2, [16, 0], [5, 3], [9, 49], 2);
            check(kernel, 1, [8, 8], [9, 3], [24, 33], 1);
            check(kernel, 1, [6, 0], [1, 3], [5, 7], 8);
            check(kernel, 2, [6, 0], [1, 1], [11, 13], 1);
            check(kernel, 1, [4, 2], [20, 1], [3, 70], 1);
            // Winograd's shapes: odd sizes, rows across chunks, > 64 channels summed in runs.
            check(kernel, 2, [40, 30], [20, 3], [13, 70], 1);
            check(kernel, 1, [32, 0], [32, 3], [1, 2], 1);
            check(kernel, 1, [40, 0], [24, 3], [6, 150], 1);
        }
    }

    #[test]
    fn the_detected_kernel_is_available() {
        assert_eq!(Kernel::available()[0], Kernel::detect());
        assert_eq!(Kernel::available().last(), Some(&Kernel::Portable));
    }

    #[test]
    fn a_kernel_this_cpu_lacks_is_refused() {
        for kernel in [Kernel::Avx512, Kernel::Avx2, Kernel::Portable] {
            let packed = PackedConv::for_kernel(kernel, &[1.0], [1, 1, 1, 1], &[0.0], 1);
            assert_eq!(packed.is_some(), Kernel::available().contains(&kernel));
        }
    }
}
