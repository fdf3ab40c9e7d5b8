//! Linear layers over tokens (BiRefNet's Swin: attention projections, MLPs, patch merging) on
//! the direct kernel's register tile.
//!
//! flex multiplies through the `gemm` crate, whose AVX-512 kernels need a nightly compiler:
//! on stable it runs its AVX2 kernel, and Swin's linear layers were 30 % of BiRefNet-lite's
//! forward. `y[token][out] = Σ_in x[token][in] · w[out][in]` is the tile of `accumulate_tile`
//! with the roles swapped: the vector it loads runs along the outputs (the weights, stored
//! transposed as `[in][out]`, so one input's weights for a tile of outputs are contiguous),
//! and the values it broadcasts, one per lane, are `block` tokens' inputs, packed
//! `[in][lane]`. GELU can be applied as the tile is stored, as the convolution applies ReLU.

use rayon::prelude::*;

use super::{CHANNELS_PER_SUM, Kernel, MAX_TILE_VALUES, accumulate_tile};

/// Tokens per job: `ROW_BLOCKS` register blocks share each tile of weights loaded into cache.
const ROW_BLOCKS: usize = 8;

/// A linear layer's weights, packed for the kernel.
#[derive(Debug)]
pub struct PackedLinear {
    kernel: Kernel,
    in_width: usize,
    out_width: usize,
    /// `[output tile][in][tile]`: the weights transposed, in panels of one tile of outputs
    /// (zero past `out_width`), so a tile's weights are read in one contiguous stream. In
    /// `[in][out]` order a tile's rows were `out` floats apart, a multiple of 1 KiB in
    /// Swin, and they all fell into a few of the L1 cache's sets.
    weights: Vec<f32>,
    bias: Vec<f32>,
}

impl PackedLinear {
    /// `weight` is PyTorch's `[out, in]`; no bias is a zero bias.
    pub fn new(weight: &[f32], [out_width, in_width]: [usize; 2], bias: Option<&[f32]>) -> Self {
        let kernel = Kernel::detect();
        assert_eq!(weight.len(), out_width * in_width);
        let tile = kernel.tile();
        let mut weights = vec![0.0; in_width * out_width.next_multiple_of(tile)];
        for (o, row) in weight.chunks_exact(in_width).enumerate() {
            let panel = &mut weights[o / tile * in_width * tile..];
            for (i, &w) in row.iter().enumerate() {
                panel[i * tile + o % tile] = w;
            }
        }
        let bias = bias.map_or_else(|| vec![0.0; out_width], <[f32]>::to_vec);
        assert_eq!(bias.len(), out_width);
        Self {
            kernel,
            in_width,
            out_width,
            weights,
            bias,
        }
    }

    pub fn in_width(&self) -> usize {
        self.in_width
    }

    pub fn out_width(&self) -> usize {
        self.out_width
    }

    /// The layer's output for a zero input.
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// `x` is `[tokens, in]`, row-major; returns `[tokens, out]`, through GELU if asked.
    pub fn forward(&self, x: &[f32], with_gelu: bool) -> Vec<f32> {
        let block = self.kernel.block();
        let (in_width, out_width) = (self.in_width, self.out_width);
        assert_eq!(x.len() % in_width, 0, "whole tokens");
        let tokens = x.len() / in_width;
        let rows_per_job = block * ROW_BLOCKS;
        let mut out = vec![0.0f32; tokens * out_width];
        out.par_chunks_mut(rows_per_job * out_width)
            .zip(x.par_chunks(rows_per_job * in_width))
            .for_each(|(out, x)| match self.kernel {
                // SAFETY: `kernel` is this CPU's (`Kernel::detect`).
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512 => unsafe { self.job_avx512(x, out, with_gelu) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => unsafe { self.job_avx2(x, out, with_gelu) },
                _ => self.job(x, out, with_gelu),
            });
        out
    }

    /// [`PackedLinear::job`] with its packing, bias and GELU loops vectorised for AVX-512.
    ///
    /// # Safety
    /// Needs AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn job_avx512(&self, x: &[f32], out: &mut [f32], with_gelu: bool) {
        self.job(x, out, with_gelu)
    }

    /// [`PackedLinear::job`] with its loops vectorised for AVX2.
    ///
    /// # Safety
    /// Needs AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn job_avx2(&self, x: &[f32], out: &mut [f32], with_gelu: bool) {
        self.job(x, out, with_gelu)
    }

    /// The outputs of one run of whole tokens `x` into `out`: the tokens packed for the
    /// kernel, then every tile of outputs for every block of them.
    #[inline(always)]
    fn job(&self, x: &[f32], out: &mut [f32], with_gelu: bool) {
        let (block, tile) = (self.kernel.block(), self.kernel.tile());
        let (in_width, out_width) = (self.in_width, self.out_width);
        let rows = x.len() / in_width;
        // `[row block][in][lane]`, zero for lanes past the last token.
        let mut packed = vec![0.0f32; rows.div_ceil(block) * in_width * block];
        for (r, token) in x.chunks_exact(in_width).enumerate() {
            let blocked = &mut packed[r / block * in_width * block..];
            for (i, &v) in token.iter().enumerate() {
                blocked[i * block + r % block] = v;
            }
        }
        let mut sum = [0.0f32; MAX_TILE_VALUES];
        let panels = self.weights.chunks_exact(in_width * tile);
        for (o0, panel) in (0..out_width).step_by(tile).zip(panels) {
            let len = tile.min(out_width - o0);
            for (b, inputs) in packed.chunks_exact(in_width * block).enumerate() {
                let chunks = inputs
                    .chunks(CHANNELS_PER_SUM * block)
                    .zip(panel.chunks(CHANNELS_PER_SUM * tile));
                for (chunk, (inputs, weights)) in chunks.enumerate() {
                    assert_eq!(
                        weights.len() / tile,
                        inputs.len() / block,
                        "a row of weights per input"
                    );
                    // SAFETY: `kernel` is this CPU's (`Kernel::detect`); the weights
                    // hold a row of `tile` per input (checked above), and the packed
                    // inputs are whole inputs of `block` lanes.
                    unsafe {
                        accumulate_tile(
                            self.kernel,
                            weights,
                            tile,
                            &[0],
                            inputs,
                            &mut sum,
                            chunk > 0,
                        )
                    };
                }
                for lane in 0..block.min(rows - b * block) {
                    let row = b * block + lane;
                    let dst = &mut out[row * out_width + o0..][..len];
                    let values = &sum[lane * tile..][..len];
                    let bias = &self.bias[o0..][..len];
                    for ((d, &v), &b) in dst.iter_mut().zip(values).zip(bias) {
                        *d = if with_gelu { gelu(v + b) } else { v + b };
                    }
                }
            }
        }
    }
}

/// PyTorch's exact GELU, `x · Φ(x)`, with [`erf`] below.
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// The error function as a rational function of x on [-4, 4] (beyond, ±1 in float32), the
/// approximation Eigen and XLA use for float32: a few ulp from the exact value, and plain
/// multiply-adds where libm's `erff` is a branchy call per value (it was 8 % of BiRefNet-lite's
/// forward inside flex's GELU). Not `mul_add`: without FMA enabled at compile time that is a
/// call to libm's `fmaf` per term.
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    for alpha in [
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_6e-3,
        -1.609_603_3e-2,
    ] {
        p = p * x2 + alpha;
    }
    let mut q = -1.456_607_2e-5f32;
    for beta in [
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329_2e-3,
        -1.426_473_9e-2,
    ] {
        q = q * x2 + beta;
    }
    x * p / q
}

#[cfg(test)]
mod tests {
    use super::{PackedLinear, erf, gelu};

    /// The rational erf against the series over [-6, 6] in steps of 1/1024.
    #[test]
    fn erf_matches_the_series() {
        let worst = (-6 * 1024..=6 * 1024)
            .map(|i| i as f32 / 1024.0)
            .map(|x| (erf(x) as f64 - reference_erf(x as f64)).abs())
            .fold(0.0f64, f64::max);
        assert!(worst < 1e-6, "{worst:e}");
        assert_eq!(gelu(0.0), 0.0);
        assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6, "{}", gelu(1.0));
        assert!((gelu(-3.0) + 0.004_049_7).abs() < 1e-6, "{}", gelu(-3.0));
    }

    /// erf in f64, an independent reference: its Taylor series below 2.5, and above,
    /// 1 − erfc by erfc's continued fraction (Abramowitz & Stegun 7.1.14).
    fn reference_erf(x: f64) -> f64 {
        let a = x.abs();
        if a < 2.5 {
            let (mut term, mut sum) = (x, x);
            for n in 1..60 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            return sum * 2.0 / std::f64::consts::PI.sqrt();
        }
        let mut k = a;
        for n in (1..200).rev() {
            k = a + (n as f64 / 2.0) / k;
        }
        let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / k;
        x.signum() * (1.0 - erfc)
    }

    /// Against the plain sum in f64, for widths that leave partial tiles and partial row
    /// blocks, inputs past one run of `CHANNELS_PER_SUM`, with and without bias and GELU.
    #[test]
    fn matches_the_plain_product() {
        for (tokens, in_width, out_width) in [(1, 3, 5), (70, 96, 288), (9, 200, 33)] {
            let x: Vec<f32> = (0..tokens * in_width)
                .map(|i| ((i * 7919) % 1013) as f32 / 506.0 - 1.0)
                .collect();
            let w: Vec<f32> = (0..out_width * in_width)
                .map(|i| ((i * 104_729) % 1009) as f32 / 504.0 - 1.0)
                .collect();
            let b: Vec<f32> = (0..out_width).map(|o| o as f32 / 7.0 - 1.0).collect();
            for (bias, with_gelu) in [(None, false), (Some(&b[..]), true)] {
                let linear = PackedLinear::new(&w, [out_width, in_width], bias);
                let got = linear.forward(&x, with_gelu);
                assert_eq!(got.len(), tokens * out_width);
                let mut worst = 0.0f64;
                for t in 0..tokens {
                    for o in 0..out_width {
                        let mut want = bias.map_or(0.0, |b| b[o] as f64);
                        for i in 0..in_width {
                            want += x[t * in_width + i] as f64 * w[o * in_width + i] as f64;
                        }
                        if with_gelu {
                            want = 0.5 * want * (1.0 + reference_erf(want / 2f64.sqrt()));
                        }
                        worst = worst.max((got[t * out_width + o] as f64 - want).abs());
                    }
                }
                assert!(worst < 1e-3, "{tokens}x{in_width}->{out_width}: {worst:e}");
            }
        }
    }
}
