//! Winograd F(2×2, 3×3) for stride-1, undilated 3×3 convolutions (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2016).
//!
//! A 2×2 block of output pixels (a "tile") is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` for its 4×4 input
//! window `d` and the 3×3 kernel `g`: 16 multiply-adds per input × output channel where the
//! direct kernel spends 36, so U²-Net's 3×3 convolutions, nearly all of its work, do 2.25×
//! fewer. The 16 products are 16 small matrix products over channels; each runs on the
//! direct kernel's register tile (`accumulate_tile` with one tap), with a chunk of tiles
//! standing where a row's pixels stand there. The transforms are additions only.

use rayon::prelude::*;

use super::{
    CHANNELS_PER_SUM, Kernel, MAX_TILE_VALUES, PackedConv, Planes, SharedOut, accumulate_tile,
    channel_planes,
};

/// Positions of the transformed 4×4 tile.
const POSITIONS: usize = 16;

/// `G g Gᵀ` of every kernel, packed `[position][output block][input channel][block lane]`.
pub(super) fn transform_weights(
    weight: &[f32],
    [out_channels, in_channels]: [usize; 2],
    block: usize,
) -> Vec<f32> {
    const G: [[f64; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    let blocks = out_channels.div_ceil(block);
    let per_position = blocks * in_channels * block;
    let mut packed = vec![0.0; POSITIONS * per_position];
    for o in 0..out_channels {
        let (b, lane) = (o / block, o % block);
        for c in 0..in_channels {
            let g = &weight[(o * in_channels + c) * 9..][..9];
            for i in 0..4 {
                for j in 0..4 {
                    let mut u = 0.0;
                    for k in 0..3 {
                        for l in 0..3 {
                            u += G[i][k] * g[k * 3 + l] as f64 * G[j][l];
                        }
                    }
                    packed[(i * 4 + j) * per_position + (b * in_channels + c) * block + lane] =
                        u as f32;
                }
            }
        }
    }
    packed
}

/// Whether Winograd beats the direct kernel on `in_channels → out_channels`. Its input
/// transform costs per input channel and pixel, its output transform less per output
/// channel, its products per channel pair; measured on U²-Net's and IS-Net's shapes
/// (`benches/conv.rs`, 2-core Zen 4) it wins where `19·in + 7·out < in·out` (16→64: 1.2×,
/// 32→32: 1.4×, 32→64: 1.4×, 64→64: 1.6×) and loses below (16→16: 0.85×, 64→16: 0.75×).
/// Above `CHANNELS_PER_SUM` input channels the direct kernel sums in runs, and Winograd
/// also wins on 128→16 (1.3×) and 1024→256 (1.9×).
pub(super) fn suits([in_channels, out_channels]: [usize; 2]) -> bool {
    19 * in_channels + 7 * out_channels < in_channels * out_channels
        || (in_channels > CHANNELS_PER_SUM && out_channels >= 16)
}

/// Whether rows `width` pixels wide fill Winograd's chunks well enough: per pixel and channel
/// pair it does 4 multiply-adds (plus about a quarter for the transforms) where the direct
/// kernel does 9, but over whole chunks of `2 · tile` columns where the direct kernel works
/// in tiles of `tile`.
pub(super) fn fills(width: usize, tile: usize) -> bool {
    let winograd = 5 * width.div_ceil(2 * tile) * 2 * tile;
    let direct = 9 * width.div_ceil(tile) * tile;
    winograd < direct
}

impl PackedConv {
    /// [`PackedConv::forward`] by Winograd, for 3×3 kernels at dilation 1.
    pub(super) fn forward_winograd(
        &self,
        weights: &[f32],
        parts: &[Planes],
        batch: usize,
        [height, width]: [usize; 2],
        relu: bool,
    ) -> Vec<f32> {
        let tiles = self.kernel.tile();
        let tiles_y = height.div_ceil(2);
        let chunks = width.div_ceil(2).div_ceil(tiles);
        // Windows are read from the planes in place, with zeros outside (no padded copy).
        let planes = channel_planes(parts, batch, [height, width]);

        let shape = Shape {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            height,
            width,
        };
        let len = batch * self.out_channels * height * width;
        let mut out = Vec::<f32>::with_capacity(len);
        let out_ptr = SharedOut(out.as_mut_ptr());
        let blocks = self.out_channels.div_ceil(self.kernel.block());
        let kernel = self.kernel;
        (0..batch * tiles_y * chunks).into_par_iter().for_each_init(
            || Scratch {
                transformed: vec![0.0; POSITIONS * self.in_channels * tiles],
                products: vec![[0.0; MAX_TILE_VALUES]; POSITIONS * blocks],
            },
            |scratch, job| {
                let (n, ty, chunk) = (
                    job / (tiles_y * chunks),
                    job / chunks % tiles_y,
                    job % chunks,
                );
                let job = Job {
                    shape: &shape,
                    weights,
                    bias: &self.bias,
                    relu,
                    out: out_ptr,
                    // The first output value of this image's row 2·ty, column 2·chunk·tiles.
                    out_start: n * self.out_channels * height * width
                        + 2 * ty * width
                        + 2 * chunk * tiles,
                    rows: (height - 2 * ty).min(2),
                    columns: (width - 2 * chunk * tiles).min(2 * tiles),
                    corner: [2 * ty, 2 * chunk * tiles],
                };
                let planes = &planes[n * self.in_channels..][..self.in_channels];
                // SAFETY: `kernel` is one this CPU has (as for the direct kernel); the scratch
                // is sized for these channels; the job's output rows and columns are inside
                // the output and written by this job only.
                unsafe { run_job(kernel, &job, planes, scratch) };
            },
        );
        // SAFETY: the jobs above wrote every (image, channel, row, column) of the output.
        unsafe { out.set_len(len) };
        out
    }
}

struct Shape {
    in_channels: usize,
    out_channels: usize,
    height: usize,
    width: usize,
}

/// One row of tiles of one chunk, for every output channel.
struct Job<'a> {
    shape: &'a Shape,
    weights: &'a [f32],
    bias: &'a [f32],
    relu: bool,
    out: SharedOut,
    out_start: usize,
    rows: usize,
    columns: usize,
    /// The first output row and column, which are also the first input row and column of
    /// the windows in padded coordinates.
    corner: [usize; 2],
}

/// A worker's buffers: `Bᵀ d B` as `[position][input channel][tile]`, and the products as
/// `[position · output block]` register tiles.
struct Scratch {
    transformed: Vec<f32>,
    products: Vec<[f32; MAX_TILE_VALUES]>,
}

/// Compiles [`job`] for the kernel's instructions, so the transforms are vectorised as wide
/// as the products.
///
/// # Safety
/// As at the call in `forward_winograd`.
unsafe fn run_job(kernel: Kernel, job: &Job, planes: &[&[f32]], scratch: &mut Scratch) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { x86::job_avx512(job, planes, scratch) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { x86::job_avx2(job, planes, scratch) },
        _ => unsafe { run::<16>(Kernel::Portable, job, planes, scratch) },
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    /// # Safety
    /// Needs AVX-512F; otherwise as [`run`].
    #[target_feature(enable = "avx512f")]
    pub unsafe fn job_avx512(job: &Job, planes: &[&[f32]], scratch: &mut Scratch) {
        unsafe { run::<32>(Kernel::Avx512, job, planes, scratch) }
    }

    /// # Safety
    /// Needs AVX2 and FMA; otherwise as [`run`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn job_avx2(job: &Job, planes: &[&[f32]], scratch: &mut Scratch) {
        unsafe { run::<16>(Kernel::Avx2, job, planes, scratch) }
    }
}

/// Transforms the chunk's input, multiplies it by the transformed weights position by
/// position, and transforms the products back into two output rows.
///
/// # Safety
/// `kernel` must be one this CPU supports, with `kernel.tile() == TILES`; `job`'s output range
/// inside the output and this job's alone.
#[inline(always)]
unsafe fn run<const TILES: usize>(
    kernel: Kernel,
    job: &Job,
    planes: &[&[f32]],
    scratch: &mut Scratch,
) {
    let shape = job.shape;
    let (in_channels, block) = (shape.in_channels, kernel.block());
    let blocks = shape.out_channels.div_ceil(block);
    for (c, plane) in planes.iter().enumerate() {
        transform_input::<TILES>(
            plane,
            [shape.height, shape.width],
            job.corner,
            &mut scratch.transformed,
            c,
            in_channels,
        );
    }
    let per_position = blocks * in_channels * block;
    let chunk_weights = CHANNELS_PER_SUM * block;
    for position in 0..POSITIONS {
        let input = &scratch.transformed[position * in_channels * TILES..][..in_channels * TILES];
        let weights = &job.weights[position * per_position..][..per_position];
        for (b, weights) in weights.chunks_exact(in_channels * block).enumerate() {
            let tile = &mut scratch.products[position * blocks + b];
            for (chunk, weights) in weights.chunks(chunk_weights).enumerate() {
                let input = &input[chunk * CHANNELS_PER_SUM * TILES..];
                // SAFETY: the caller's kernel; `input` holds this chunk's channels of TILES
                // values each (a plane of TILES, one tap at 0), `weights` whole channels.
                unsafe { accumulate_tile(kernel, input, TILES, &[0], weights, tile, chunk > 0) };
            }
        }
    }
    let mut rows = [[0.0f32; 64]; 2];
    for o in 0..shape.out_channels {
        let (b, lane) = (o / block, o % block);
        let products: [&[f32; TILES]; POSITIONS] = std::array::from_fn(|position| {
            scratch.products[position * blocks + b][lane * TILES..][..TILES]
                .try_into()
                .expect("TILES values")
        });
        transform_output(&products, job.bias[o], job.relu, &mut rows);
        for (r, values) in rows.iter().enumerate().take(job.rows) {
            let start = job.out_start + (o * shape.height + r) * shape.width;
            // SAFETY: row r < job.rows of channel o, columns < job.columns, are this job's.
            let dst = unsafe { job.out.uninit(start, job.columns) };
            for (d, &v) in dst.iter_mut().zip(values) {
                d.write(v);
            }
        }
    }
}

/// `Bᵀ d B` of channel `c`'s TILES windows, into `transformed[position][c][tile]`: the
/// windows of `plane` (`height × width`) whose top left corner, counting the zero border
/// around the plane, is `corner`.
#[inline(always)]
fn transform_input<const TILES: usize>(
    plane: &[f32],
    [height, width]: [usize; 2],
    [top, left]: [usize; 2],
    transformed: &mut [f32],
    c: usize,
    in_channels: usize,
) {
    // d B along each of the window's 4 rows: [row][column of the tile][tile].
    let mut rows = [[[0.0f32; TILES]; 4]; 4];
    let mut edge = [0.0f32; 2 * 32 + 2];
    let span = 2 * TILES + 2;
    for (r, out) in rows.iter_mut().enumerate() {
        // Row `top + r - 1` of the plane, columns `left - 1 .. left - 1 + span`.
        let y = (top + r).wrapping_sub(1);
        if y >= height {
            continue; // the border: d B of zeros is zero
        }
        let source = &plane[y * width..][..width];
        let line = if left >= 1 && left + span - 1 <= width {
            &source[left - 1..][..span]
        } else {
            let first = left.saturating_sub(1);
            let last = (left + span - 1).min(width);
            let offset = first + 1 - left;
            edge.fill(0.0);
            edge[offset..][..last - first].copy_from_slice(&source[first..last]);
            &edge[..span]
        };
        for t in 0..TILES {
            let [d0, d1, d2, d3] = [
                line[2 * t],
                line[2 * t + 1],
                line[2 * t + 2],
                line[2 * t + 3],
            ];
            out[0][t] = d0 - d2;
            out[1][t] = d1 + d2;
            out[2][t] = d2 - d1;
            out[3][t] = d1 - d3;
        }
    }
    // Bᵀ (d B) down each column.
    let at = |i: usize, j: usize| ((i * 4 + j) * in_channels + c) * TILES;
    for j in 0..4 {
        let [e0, e1, e2, e3] = [&rows[0][j], &rows[1][j], &rows[2][j], &rows[3][j]];
        for (t, v) in transformed[at(0, j)..][..TILES].iter_mut().enumerate() {
            *v = e0[t] - e2[t];
        }
        for (t, v) in transformed[at(1, j)..][..TILES].iter_mut().enumerate() {
            *v = e1[t] + e2[t];
        }
        for (t, v) in transformed[at(2, j)..][..TILES].iter_mut().enumerate() {
            *v = e2[t] - e1[t];
        }
        for (t, v) in transformed[at(3, j)..][..TILES].iter_mut().enumerate() {
            *v = e1[t] - e3[t];
        }
    }
}

/// `Aᵀ M A + bias` (through ReLU if asked) of one output channel's TILES products: two rows
/// of `2·TILES` pixels.
#[inline(always)]
fn transform_output<const TILES: usize>(
    m: &[&[f32; TILES]; POSITIONS],
    bias: f32,
    relu: bool,
    rows: &mut [[f32; 64]; 2],
) {
    let mut columns = [[[0.0f32; TILES]; 4]; 2];
    // Aᵀ M down each column.
    for j in 0..4 {
        for t in 0..TILES {
            let [m0, m1, m2, m3] = [m[j][t], m[4 + j][t], m[8 + j][t], m[12 + j][t]];
            columns[0][j][t] = m0 + m1 + m2;
            columns[1][j][t] = m1 - m2 - m3;
        }
    }
    // (Aᵀ M) A along each row.
    for (s, out) in columns.iter().zip(rows.iter_mut()) {
        for t in 0..TILES {
            let mut left = s[0][t] + s[1][t] + s[2][t] + bias;
            let mut right = s[1][t] - s[2][t] - s[3][t] + bias;
            if relu {
                left = left.max(0.0);
                right = right.max(0.0);
            }
            out[2 * t] = left;
            out[2 * t + 1] = right;
        }
    }
}
