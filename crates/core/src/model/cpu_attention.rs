//! Swin's shifted-window attention on the CPU (BiRefNet's backbone), used when the model runs
//! on burn's flex backend.
//!
//! On flex, a block's attention was a chain of whole-tensor passes: pad, roll and permute the
//! tokens into windows, permute the `qkv` projection into heads, scale, two batched matmuls
//! (flex's AVX2 `gemm` on stable Rust), add the position bias and the mask, softmax, and
//! permute, roll and crop back; for BiRefNet-general at 1024² those copies, the elementwise
//! passes and the small matmuls were a fifth of the forward. Here each window reads its
//! tokens' `qkv` rows from the image's own token order (the cyclic shift and the zero padding
//! are index arithmetic), and every head's scores, softmax and weighted sum stay in one
//! window's scratch, vectorised for the CPU it runs on.

use rayon::prelude::*;

/// Added to the score of two tokens that the cyclic shift brought together from opposite
/// edges: exp() of it is exactly 0.
pub const MASKED: f32 = -1e9;

/// Where the windows lie: `batch` images of `size` tokens (rows, columns), `channels` per
/// token in `heads` heads, cut into `window`² windows after a cyclic shift of `shift` tokens
/// up and left (0: none), the image zero-padded at the bottom and right to whole windows.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    pub batch: usize,
    pub size: [usize; 2],
    pub window: usize,
    pub shift: usize,
    pub heads: usize,
    pub channels: usize,
}

impl Windows {
    fn padded(&self) -> [usize; 2] {
        self.size.map(|s| s.next_multiple_of(self.window))
    }

    fn tokens(&self) -> usize {
        self.window * self.window
    }

    /// Which of the nine regions of the padded image a position of the shifted image falls in
    /// (upstream's `img_mask`); tokens of different regions do not attend to each other.
    fn region(&self, [y, x]: [usize; 2]) -> u8 {
        let part = |i: usize, size: usize| {
            if i < size - self.window {
                0
            } else if i < size - self.shift {
                1
            } else {
                2
            }
        };
        let [hp, wp] = self.padded();
        part(y, hp) * 3 + part(x, wp)
    }
}

/// Multi-head self-attention inside each window, as upstream's `WindowAttention` after its
/// `qkv` projection and before `proj`, with `SwinTransformerBlock`'s shift and padding.
///
/// `qkv` is `[batch · h · w, 3 · channels]` in the images' token order (each row `q`, `k`,
/// `v`, each `[heads, head width]`); `padding` is the `qkv` row of a padded (zero) token,
/// i.e. the projection's bias. `position_bias` is `[heads, window², window²]`. Returns
/// `[batch · h · w, channels]`, heads side by side, in the same token order.
pub fn window_attention(
    qkv: &[f32],
    padding: &[f32],
    position_bias: &[f32],
    windows: Windows,
) -> Vec<f32> {
    attention_on(Vector::detect(), qkv, padding, position_bias, windows)
}

fn attention_on(
    vector: Vector,
    qkv: &[f32],
    padding: &[f32],
    position_bias: &[f32],
    windows: Windows,
) -> Vec<f32> {
    let Windows {
        batch,
        size: [h, w],
        window,
        shift,
        heads,
        channels,
    } = windows;
    let [hp, wp] = windows.padded();
    let tokens = windows.tokens();
    assert!(
        supports(heads, channels),
        "whole heads at most {WIDTH} wide"
    );
    assert!(window > 0 && shift < window, "a shift within the window");
    assert_eq!(
        qkv.len(),
        batch * h * w * 3 * channels,
        "a qkv row per token"
    );
    assert_eq!(padding.len(), 3 * channels);
    assert_eq!(position_bias.len(), heads * tokens * tokens);
    let (rows, cols) = (hp / window, wp / window);

    // Each window's output, `[window][token][channel]`, then back into token order.
    let mut windowed = vec![0.0f32; batch * rows * cols * tokens * channels];
    windowed
        .par_chunks_mut(tokens * channels)
        .enumerate()
        .for_each_init(
            || Scratch::new(tokens),
            |scratch, (index, out)| {
                let (image, index) = (index / (rows * cols), index % (rows * cols));
                let (wy, wx) = (index / cols, index % cols);
                // The window's tokens: position in the shifted, padded image, then where
                // the shift brought it from (`None`: a padded token).
                let mut sources = Vec::with_capacity(tokens);
                for t in 0..tokens {
                    let (py, px) = (wy * window + t / window, wx * window + t % window);
                    let (sy, sx) = ((py + shift) % hp, (px + shift) % wp);
                    let row = (sy < h && sx < w).then(|| (image * h + sy) * w + sx);
                    let qkv = row.map_or(padding, |r| &qkv[r * 3 * channels..][..3 * channels]);
                    sources.push((qkv, windows.region([py, px])));
                }
                let job = Window {
                    sources: &sources,
                    position_bias,
                    heads,
                    channels,
                    shifted: shift > 0,
                };
                vector.attend(&job, scratch, out);
            },
        );

    let mut out = vec![0.0f32; batch * h * w * channels];
    out.par_chunks_mut(w * channels)
        .enumerate()
        .for_each(|(row, out)| {
            let (image, sy) = (row / h, row % h);
            let py = (sy + hp - shift) % hp;
            for (sx, out) in out.chunks_exact_mut(channels).enumerate() {
                let px = (sx + wp - shift) % wp;
                let index = (image * rows + py / window) * cols + px / window;
                let t = (py % window) * window + px % window;
                out.copy_from_slice(&windowed[(index * tokens + t) * channels..][..channels]);
            }
        });
    out
}

/// One window's inputs: each token's `qkv` row and mask region.
struct Window<'a> {
    sources: &'a [(&'a [f32], u8)],
    position_bias: &'a [f32],
    heads: usize,
    channels: usize,
    shifted: bool,
}

/// One head's operands, laid out for the blocks below: `q` (scaled) and `v` as
/// `[token][WIDTH]`, `k` transposed `[WIDTH][key]`, and the scores `[token][key]`; zero past
/// the head's width, `q` and the scores to whole blocks of query tokens, `k` and the scores'
/// rows to whole blocks of keys.
struct Scratch {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    scores: Vec<f32>,
}

impl Scratch {
    fn new(tokens: usize) -> Self {
        let (rows, keys) = (
            tokens.next_multiple_of(QUERIES),
            tokens.next_multiple_of(KEYS),
        );
        Self {
            q: vec![0.0; rows * WIDTH],
            k: vec![0.0; WIDTH * keys],
            v: vec![0.0; tokens * WIDTH],
            scores: vec![0.0; rows * keys],
        }
    }
}

/// The instruction set the loops below are compiled for, chosen once per call: the same
/// plain Rust, vectorised by the compiler for each.
#[derive(Debug, Clone, Copy)]
enum Vector {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Vector {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Self::Avx2;
            }
        }
        Self::Portable
    }

    /// Every variant this CPU can run.
    #[cfg(test)]
    fn available() -> Vec<Self> {
        let mut all = vec![Self::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                all.push(Self::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                all.push(Self::Avx512);
            }
        }
        all
    }

    fn attend(self, job: &Window, scratch: &mut Scratch, out: &mut [f32]) {
        match self {
            // SAFETY: `detect` chose the variant only where the CPU has its instructions.
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => unsafe { attend_avx512(job, scratch, out) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => unsafe { attend_avx2(job, scratch, out) },
            Self::Portable => attend(job, scratch, out, weighted_sums),
        }
    }
}

/// # Safety
/// Needs AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn attend_avx512(job: &Window, scratch: &mut Scratch, out: &mut [f32]) {
    // SAFETY: this function's caller has AVX-512F.
    attend(job, scratch, out, |p, keys, v, sums| unsafe {
        x86::weighted_sums_avx512(p, keys, v, sums)
    })
}

/// # Safety
/// Needs AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attend_avx2(job: &Window, scratch: &mut Scratch, out: &mut [f32]) {
    attend(job, scratch, out, weighted_sums)
}

/// Lanes of the partial maxima and sums: a float reduction is vectorised only when written as
/// independent lanes (the compiler may not reorder float additions itself).
const LANES: usize = 16;

/// The head width the blocks below hold in registers; narrower heads are padded with zeros
/// (Swin's are 32 wide), wider ones are not handled here ([`supports`]).
const WIDTH: usize = 32;
/// Query tokens per block: their scores against a block of keys, and their weighted sums of
/// the values, are `QUERIES` × one vector.
const QUERIES: usize = 4;
/// Keys per block of scores: one AVX-512 vector.
const KEYS: usize = 16;

/// Whether [`window_attention`] takes heads `width` wide.
pub fn supports(heads: usize, channels: usize) -> bool {
    heads > 0 && channels.is_multiple_of(heads) && channels / heads <= WIDTH
}

/// Attention of one window, every head: `out` is `[token][channel]`.
/// `weighted_sums` is [`weighted_sums`] or a version of it for this CPU.
#[inline(always)]
fn attend(
    job: &Window,
    scratch: &mut Scratch,
    out: &mut [f32],
    weighted_sums: impl Fn(&[f32], usize, &[f32], &mut [[f32; WIDTH]; QUERIES]),
) {
    let tokens = job.sources.len();
    let keys = tokens.next_multiple_of(KEYS);
    let width = job.channels / job.heads;
    let scale = (width as f32).powf(-0.5);
    let Scratch { q, k, v, scores } = scratch;
    for head in 0..job.heads {
        let at = head * width;
        for (t, (qkv, _)) in job.sources.iter().enumerate() {
            let (tq, tk, tv) = (
                &qkv[at..][..width],
                &qkv[job.channels + at..][..width],
                &qkv[2 * job.channels + at..][..width],
            );
            for (q, &x) in q[t * WIDTH..][..width].iter_mut().zip(tq) {
                *q = x * scale;
            }
            for (d, &x) in tk.iter().enumerate() {
                k[d * keys + t] = x;
            }
            v[t * WIDTH..][..width].copy_from_slice(tv);
        }
        // (q · scale) kᵀ, a block of queries × a block of keys at a time.
        for (i0, scores) in scores.chunks_exact_mut(QUERIES * keys).enumerate() {
            let q: &[[f32; WIDTH]; QUERIES] = as_blocks(&q[i0 * QUERIES * WIDTH..]);
            for j0 in (0..keys).step_by(KEYS) {
                let mut sums = [[0.0f32; KEYS]; QUERIES];
                for d in 0..WIDTH {
                    let k: &[f32; KEYS] = as_array(&k[d * keys + j0..]);
                    for (sum, q) in sums.iter_mut().zip(q) {
                        for (s, &k) in sum.iter_mut().zip(k) {
                            *s += q[d] * k;
                        }
                    }
                }
                for (r, sum) in sums.iter().enumerate() {
                    scores[r * keys + j0..][..KEYS].copy_from_slice(sum);
                }
            }
        }
        // Then the bias and the mask, as upstream adds them, and the softmax.
        let bias = &job.position_bias[head * tokens * tokens..][..tokens * tokens];
        for (i, row) in scores.chunks_exact_mut(keys).take(tokens).enumerate() {
            let row = &mut row[..tokens];
            for (s, &b) in row.iter_mut().zip(&bias[i * tokens..][..tokens]) {
                *s += b;
            }
            if job.shifted {
                let region = job.sources[i].1;
                for (s, (_, r)) in row.iter_mut().zip(job.sources) {
                    *s += if *r == region { 0.0 } else { MASKED };
                }
            }
            softmax(row);
        }
        // scores · v, a block of queries at a time, their sums side by side in registers.
        for (i0, scores) in scores.chunks_exact(QUERIES * keys).enumerate() {
            let mut sums = [[0.0f32; WIDTH]; QUERIES];
            weighted_sums(scores, keys, &v[..tokens * WIDTH], &mut sums);
            for (r, sum) in sums.iter().enumerate() {
                let token = i0 * QUERIES + r;
                if token < tokens {
                    out[token * job.channels + at..][..width].copy_from_slice(&sum[..width]);
                }
            }
        }
    }
}

/// `sums[r] = Σ_j scores[r · keys + j] · v[j]` for a block of query rows: the attention's
/// weighted sum of the values, `v` being `[token][WIDTH]`.
fn weighted_sums(scores: &[f32], keys: usize, v: &[f32], sums: &mut [[f32; WIDTH]; QUERIES]) {
    for (j, v) in v.chunks_exact(WIDTH).enumerate() {
        for (r, sum) in sums.iter_mut().enumerate() {
            let p = scores[r * keys + j];
            for (s, &x) in sum.iter_mut().zip(v) {
                *s += p * x;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{QUERIES, WIDTH};
    use std::arch::x86_64::*;

    /// [`super::weighted_sums`] with the block's sums in eight zmm registers (the compiler
    /// keeps them in memory, one scalar at a time).
    ///
    /// # Safety
    /// Needs AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weighted_sums_avx512(
        scores: &[f32],
        keys: usize,
        v: &[f32],
        sums: &mut [[f32; WIDTH]; QUERIES],
    ) {
        const { assert!(WIDTH == 32) };
        let tokens = v.len() / WIDTH;
        assert!(
            tokens <= keys && scores.len() >= QUERIES * keys,
            "a score per query and value"
        );
        let mut acc = [[_mm512_setzero_ps(); 2]; QUERIES];
        for j in 0..tokens {
            // SAFETY: `j < tokens`, so the value row `j` is inside `v`.
            let (v0, v1) = unsafe {
                let row = v.as_ptr().add(j * WIDTH);
                (_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(16)))
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `r · keys + j < QUERIES · keys ≤ scores.len()` (asserted above).
                let p = _mm512_set1_ps(unsafe { *scores.get_unchecked(r * keys + j) });
                acc[0] = _mm512_add_ps(acc[0], _mm512_mul_ps(p, v0));
                acc[1] = _mm512_add_ps(acc[1], _mm512_mul_ps(p, v1));
            }
        }
        for (sum, acc) in sums.iter_mut().zip(&acc) {
            // SAFETY: each row of `sums` holds 32 floats.
            unsafe {
                _mm512_storeu_ps(sum.as_mut_ptr(), acc[0]);
                _mm512_storeu_ps(sum.as_mut_ptr().add(16), acc[1]);
            }
        }
    }
}

fn as_array<const N: usize>(values: &[f32]) -> &[f32; N] {
    values[..N].try_into().expect("N values")
}

fn as_blocks(values: &[f32]) -> &[[f32; WIDTH]; QUERIES] {
    let rows = values[..QUERIES * WIDTH].as_chunks::<WIDTH>().0;
    rows.try_into().expect("QUERIES rows")
}

/// In place, as PyTorch's: `exp(x − max) / Σ exp(x − max)`.
#[inline(always)]
fn softmax(row: &mut [f32]) {
    let mut lanes = [f32::MIN; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::MIN, |m, &x| if x > m { x } else { m });
    let mut lanes = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (s, x) in lanes.iter_mut().zip(chunk) {
            *x = exp(*x - max);
            *s += *x;
        }
    }
    let mut sum: f32 = 0.0;
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        sum += *x;
    }
    let sum = lanes.iter().sum::<f32>() + sum;
    let inverse = 1.0 / sum;
    for x in row {
        *x *= inverse;
    }
}

/// `e^x` in float32 within 2 ulp (Cephes' `expf`: `x = n ln 2 + r`, a degree-6 polynomial
/// in `r`, scaled by `2^n` through the exponent bits), in plain arithmetic so that the
/// softmax loop vectorises (libm's `expf` is a call per value). 0 below −87.3, where the
/// float32 result would be subnormal.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, the first exact in a few bits, so `n · LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2²³: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    const LOW: f32 = -87.3;
    let clamped = x.clamp(LOW, 88.0);
    let rounded = clamped * LOG2_E + ROUND;
    let n = rounded - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = p * r + c;
    }
    let e = p * r * r + r + 1.0;
    // n sits in the low bits of `rounded` (an `as` cast would not vectorise: it saturates).
    let n_bits = rounded.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    if x < LOW { 0.0 } else { e * scale }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Textbook shifted-window attention in f64, as upstream's modules compute it: pad, roll,
    /// cut into windows, scores with bias and mask, softmax, weighted sum, and back.
    fn reference(qkv: &[f32], padding: &[f32], bias: &[f32], s: Windows) -> Vec<f32> {
        let [h, w] = s.size;
        let [hp, wp] = s.padded();
        let (c, n, width) = (s.channels, s.tokens(), s.channels / s.heads);
        let mut out = vec![0.0f32; s.batch * h * w * c];
        let token = |image: usize, [py, px]: [usize; 2]| {
            let (sy, sx) = ((py + s.shift) % hp, (px + s.shift) % wp);
            let row = (sy < h && sx < w).then(|| (image * h + sy) * w + sx);
            (row, row.map_or(padding, |r| &qkv[r * 3 * c..][..3 * c]))
        };
        for image in 0..s.batch {
            for wy in 0..hp / s.window {
                for wx in 0..wp / s.window {
                    let at =
                        |t: usize| [wy * s.window + t / s.window, wx * s.window + t % s.window];
                    for head in 0..s.heads {
                        for i in 0..n {
                            let (row, qi) = token(image, at(i));
                            let Some(row) = row else { continue };
                            let mut scores = vec![0.0f64; n];
                            for (j, score) in scores.iter_mut().enumerate() {
                                let (_, kj) = token(image, at(j));
                                let dot: f64 = (0..width)
                                    .map(|d| {
                                        qi[head * width + d] as f64
                                            * kj[c + head * width + d] as f64
                                    })
                                    .sum();
                                let masked = s.shift > 0 && s.region(at(i)) != s.region(at(j));
                                *score = dot / (width as f64).sqrt()
                                    + bias[(head * n + i) * n + j] as f64
                                    + if masked { f64::NEG_INFINITY } else { 0.0 };
                            }
                            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                            let total: f64 = scores.iter().map(|x| (x - max).exp()).sum();
                            for d in 0..width {
                                let value: f64 = (0..n)
                                    .map(|j| {
                                        let (_, vj) = token(image, at(j));
                                        (scores[j] - max).exp() / total
                                            * vj[2 * c + head * width + d] as f64
                                    })
                                    .sum();
                                out[row * c + head * width + d] = value as f32;
                            }
                        }
                    }
                }
            }
        }
        out
    }

    fn values(len: usize, seed: usize, scale: f32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0) * scale)
            .collect()
    }

    #[test]
    fn shifted_padded_windows_match_the_textbook_attention() {
        // Sizes that are and are not whole windows, with and without the shift, two images;
        // scores of several units, so that the softmax is far from uniform.
        for (size, window, shift) in [
            ([8, 8], 4, 0),
            ([8, 8], 4, 2),
            ([7, 10], 3, 0),
            ([7, 10], 3, 1),
            ([5, 5], 7, 3),
            ([9, 11], 7, 3),
        ] {
            // Heads narrower than the registers' width, and (in the last case) as wide.
            let (heads, channels) = if window == 7 && size[0] == 9 {
                (2, 64)
            } else {
                (3, 12)
            };
            let s = Windows {
                batch: 2,
                size,
                window,
                shift,
                heads,
                channels,
            };
            let n = s.tokens();
            let qkv = values(s.batch * size[0] * size[1] * 3 * s.channels, 1, 3.0);
            let padding = values(3 * s.channels, 2, 1.0);
            let bias = values(s.heads * n * n, 3, 2.0);
            let expected = reference(&qkv, &padding, &bias, s);
            for vector in Vector::available() {
                let found = attention_on(vector, &qkv, &padding, &bias, s);
                let error = crate::model::max_abs_diff(&found, &expected);
                assert!(
                    error < 1e-5,
                    "{vector:?} {size:?} window {window} shift {shift}: {error}"
                );
            }
        }
    }

    #[test]
    fn exp_is_within_two_ulp_and_zero_far_below() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let exact = (x as f64).exp();
            let error = ((exp(x) as f64 - exact) / exact).abs();
            assert!(error < 2.5e-7, "exp({x}): {} vs {exact}", exp(x));
            x += 0.0137;
        }
        assert_eq!(exp(-1e9), 0.0);
        assert_eq!(exp(-90.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }
}
