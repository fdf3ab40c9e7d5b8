//! BiRefNet (Zheng et al. 2024, "Bilateral Reference for High-Resolution Dichotomous Image
//! Segmentation"), as upstream's `models/birefnet.py` runs it at inference.
//!
//! - **Encoder**: a Swin Transformer (Swin-L for the general, portrait, matting, DIS, HRSOD,
//!   COD, massive and 2K models; Swin-T for lite) runs on the image and on the image at half
//!   size; each of its four stages is concatenated with the half-size run's, upsampled. The
//!   deepest level also receives the three shallower ones, resized down to it, and a
//!   squeeze block (one decoder block) brings it back to the backbone's width.
//! - **Decoder**: four decoder blocks (3×3 conv, ASPP with modulated deformable convolutions,
//!   3×3 conv), from the deepest level up, each fed the upsampled level below plus a 1×1
//!   lateral projection of the encoder at its level, and the image itself cut into patches
//!   stacked as channels (`image2patches`) through two 3×3 convolutions. Below the top level
//!   a gradient-attention map gates each block's output.
//! - **Output**: a 1×1 convolution at the input resolution; its sigmoid is the mask.
//!
//! The training-only paths (multi-scale supervision heads, gradient prediction heads) are in
//! the published state dicts but unused here, as upstream skips them in `eval()`. Every
//! bilinear resize uses `align_corners=True`, as upstream's do. Batch norm is folded into
//! the convolutions at load. Every width is read from the weights, so one type serves every
//! published variant; each tensor's shape is checked against the widths before it.

use burn::tensor::activation::{gelu, relu, sigmoid, softmax};
use burn::tensor::module::{adaptive_avg_pool2d, conv2d, deform_conv2d, interpolate};
use burn::tensor::ops::{ConvOptions, DeformConvOptions, InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor, TensorData};

use super::Network;
use super::cpu_attention::{self, MASKED, Windows, window_attention};
use super::cpu_conv::PackedLinear;
use super::cpu_deform::PackedDeformConv;
use super::onnx::ConvWeights;
use super::rsu::{Conv, MAX_BINDING_BYTES};
use super::state_dict::StateDict;
use crate::backend::{flex_values, from_flex_values};
use crate::error::{Result, TensorProblem};

const BATCH_NORM_EPS: f32 = 1e-5;
const LAYER_NORM_EPS: f32 = 1e-5;

/// State-dict entries upstream's model has but does not run at inference.
fn unused_at_inference(name: &str) -> bool {
    name.ends_with(".num_batches_tracked")
        || name.starts_with("decoder.conv_ms_spvn_")
        || name.starts_with("decoder.gdt_convs_pred_")
}

#[derive(Debug)]
pub struct BiRefNet {
    backbone: Swin,
    squeeze: Vec<DecoderBlock>,
    decoder: Decoder,
}

/// The intermediate results the fidelity tests compare with PyTorch's.
pub struct Outputs {
    /// The backbone's four stages on the full-size input (before the multi-scale concat).
    pub stages: Vec<Tensor<4>>,
    /// The last prediction, before the sigmoid.
    pub logits: Tensor<4>,
}

impl BiRefNet {
    /// Builds the network from a state dict with upstream's key names. Every tensor must be
    /// used (or be one upstream does not run at inference) and have the shape the widths
    /// read before it imply.
    pub fn load(mut state: StateDict, device: &Device) -> Result<Self> {
        state.skip_unused(unused_at_inference);
        let mut loader = Loader {
            state: &mut state,
            device,
            on_flex: crate::backend::on_flex(device) && std::env::var_os("NO_CPU_CONV").is_none(),
        };
        let backbone = Swin::load(&mut loader, "bb")?;
        // Each level: the backbone's width twice (the full-size and half-size runs).
        let levels: Vec<usize> = backbone.widths().iter().map(|c| 2 * c).collect();
        let deepest_in = levels.iter().sum::<usize>();
        let mut squeeze = Vec::new();
        while loader
            .state
            .contains(&format!("squeeze_module.{}.conv_in.weight", squeeze.len()))
        {
            let name = format!("squeeze_module.{}", squeeze.len());
            let in_channels = if squeeze.is_empty() {
                deepest_in
            } else {
                levels[3]
            };
            squeeze.push(DecoderBlock::load(
                &mut loader,
                &name,
                in_channels,
                Some(levels[3]),
            )?);
        }
        let decoder = Decoder::load(&mut loader, levels)?;
        state.finish()?;
        Ok(Self {
            backbone,
            squeeze,
            decoder,
        })
    }

    /// The forward pass, keeping what the tests compare.
    pub fn outputs(&self, x: Tensor<4>) -> Outputs {
        let [_, _, h, w] = x.dims();
        let full = self.backbone.forward(x.clone());
        let half = self.backbone.forward(resize(x.clone(), [h / 2, w / 2]));
        let mut levels: Vec<Tensor<4>> = full
            .iter()
            .zip(half)
            .map(|(f, s)| {
                let [_, _, fh, fw] = f.dims();
                Tensor::cat(vec![f.clone(), resize(s, [fh, fw])], 1)
            })
            .collect();
        let [_, _, dh, dw] = levels[3].dims();
        let mut context: Vec<Tensor<4>> = levels[..3]
            .iter()
            .map(|level| resize(level.clone(), [dh, dw]))
            .collect();
        context.push(levels.pop().expect("four levels"));
        let mut deepest = Tensor::cat(context, 1);
        for block in &self.squeeze {
            deepest = block.forward(vec![deepest]);
        }
        levels.push(deepest);
        let logits = self.decoder.forward(x, levels);
        Outputs {
            stages: full,
            logits,
        }
    }
}

impl Network for BiRefNet {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        sigmoid(self.outputs(x).logits)
    }
}

// ---------------------------------------------------------------------------------------
// Swin Transformer (upstream's `models/backbones/swin_v1.py`)

#[derive(Debug)]
struct Swin {
    patch_embed: PatchEmbed,
    stages: Vec<SwinStage>,
    /// `norm{i}`: applied to each stage's output.
    out_norms: Vec<LayerNorm>,
}

impl Swin {
    fn load(loader: &mut Loader, prefix: &str) -> Result<Self> {
        let patch_embed = PatchEmbed::load(loader, &format!("{prefix}.patch_embed"))?;
        let mut width = patch_embed.width();
        let mut stages = Vec::new();
        let mut out_norms = Vec::new();
        while loader.state.contains(&format!(
            "{prefix}.layers.{}.blocks.0.norm1.weight",
            stages.len()
        )) {
            let i = stages.len();
            let stage = SwinStage::load(loader, &format!("{prefix}.layers.{i}"), width)?;
            out_norms.push(LayerNorm::load(
                loader,
                &format!("{prefix}.norm{i}"),
                width,
            )?);
            width = stage.out_width(width);
            stages.push(stage);
        }
        if stages.len() != 4 {
            let name = format!("{prefix}.layers.{}.blocks.0.norm1.weight", stages.len());
            return Err(loader.state.problem(&name, TensorProblem::Missing));
        }
        Ok(Self {
            patch_embed,
            stages,
            out_norms,
        })
    }

    /// Each stage's channels.
    fn widths(&self) -> Vec<usize> {
        self.out_norms.iter().map(LayerNorm::width).collect()
    }

    /// The four stages' outputs, NCHW.
    fn forward(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        let (mut tokens, [mut h, mut w]) = self.patch_embed.forward(x);
        let mut outputs = Vec::with_capacity(4);
        for (stage, norm) in self.stages.iter().zip(&self.out_norms) {
            let (out, next) = stage.forward(tokens, [h, w]);
            let [batch, _, channels] = out.dims();
            outputs.push(
                norm.forward(out)
                    .reshape([batch, h, w, channels])
                    .permute([0, 3, 1, 2]),
            );
            tokens = next;
            [h, w] = [h.div_ceil(2), w.div_ceil(2)];
        }
        outputs
    }
}

/// A 4×4 stride-4 convolution into tokens, then LayerNorm.
#[derive(Debug)]
struct PatchEmbed {
    weight: Tensor<4>,
    bias: Tensor<1>,
    norm: LayerNorm,
}

impl PatchEmbed {
    fn load(loader: &mut Loader, prefix: &str) -> Result<Self> {
        let name = format!("{prefix}.proj.weight");
        let shape = loader.state.shape(&name)?;
        let (width, patch) = match shape[..] {
            [width, 3, patch, p] if patch == p => (width, patch),
            _ => {
                let expected = vec![shape.first().copied().unwrap_or(0), 3, 4, 4];
                return Err(loader.shape_problem(&name, shape, expected));
            }
        };
        Ok(Self {
            weight: loader.tensor(&name, [width, 3, patch, patch])?,
            bias: loader.tensor(&format!("{prefix}.proj.bias"), [width])?,
            norm: LayerNorm::load(loader, &format!("{prefix}.norm"), width)?,
        })
    }

    fn width(&self) -> usize {
        self.weight.dims()[0]
    }

    /// `[B, 3, H, W]` → tokens `[B, H/4 · W/4, C]` and their grid.
    fn forward(&self, x: Tensor<4>) -> (Tensor<3>, [usize; 2]) {
        let patch = self.weight.dims()[2];
        let [_, _, h, w] = x.dims();
        // Upstream pads the right and bottom edges up to a whole patch.
        let x = pad_bottom_right(x, [h.next_multiple_of(patch), w.next_multiple_of(patch)]);
        let options = ConvOptions::new([patch, patch], [0, 0], [1, 1], 1);
        let y = conv2d(x, self.weight.clone(), Some(self.bias.clone()), options);
        let [batch, channels, gh, gw] = y.dims();
        let tokens = y.reshape([batch, channels, gh * gw]).swap_dims(1, 2);
        (self.norm.forward(tokens), [gh, gw])
    }
}

/// One stage: `depth` blocks alternating plain and shifted windows, then (but for the last
/// stage) patch merging.
#[derive(Debug)]
struct SwinStage {
    blocks: Vec<SwinBlock>,
    window: usize,
    merge: Option<PatchMerging>,
}

impl SwinStage {
    fn load(loader: &mut Loader, prefix: &str, width: usize) -> Result<Self> {
        let table = format!("{prefix}.blocks.0.attn.relative_position_bias_table");
        let [rows, _] = loader.dims(&table)?;
        // (2·window − 1)² rows
        let side = (rows as f64).sqrt().round() as usize;
        if side * side != rows || side.is_multiple_of(2) {
            let shape = loader.state.shape(&table)?;
            return Err(loader.shape_problem(&table, shape.clone(), shape));
        }
        let window = side.div_ceil(2);
        let mut blocks = Vec::new();
        while loader
            .state
            .contains(&format!("{prefix}.blocks.{}.norm1.weight", blocks.len()))
        {
            let i = blocks.len();
            let shift = if i % 2 == 0 { 0 } else { window / 2 };
            let name = format!("{prefix}.blocks.{i}");
            blocks.push(SwinBlock::load(loader, &name, width, window, shift)?);
        }
        let merge = if loader
            .state
            .contains(&format!("{prefix}.downsample.norm.weight"))
        {
            Some(PatchMerging::load(
                loader,
                &format!("{prefix}.downsample"),
                width,
            )?)
        } else {
            None
        };
        Ok(Self {
            blocks,
            window,
            merge,
        })
    }

    fn out_width(&self, width: usize) -> usize {
        self.merge.as_ref().map_or(width, PatchMerging::out_width)
    }

    /// Returns the stage's output and its merged tokens (the next stage's input).
    fn forward(&self, mut x: Tensor<3>, size: [usize; 2]) -> (Tensor<3>, Tensor<3>) {
        let padded = size.map(|s| s.next_multiple_of(self.window));
        let shift = self.window / 2;
        // cutout's kernel on flex masks by indexing.
        let on_cpu = self.blocks.iter().all(|b| b.attention.cpu_qkv().is_some());
        let mask = (self.blocks.len() > 1 && !on_cpu)
            .then(|| shifted_window_mask(padded, self.window, shift, &x.device()));
        for block in &self.blocks {
            let mask = (block.shift > 0).then_some(mask.as_ref()).flatten();
            x = block.forward(x, size, mask);
        }
        let merged = match &self.merge {
            Some(merge) => merge.forward(x.clone(), size),
            None => x.clone(),
        };
        (x, merged)
    }
}

/// `[nW, N, N]`: 0 where two tokens of a shifted window come from the same region of the
/// (padded) image, [`MASKED`] where the cyclic shift brought them together from opposite
/// edges. As upstream's `BasicLayer.forward`.
fn shifted_window_mask(
    [hp, wp]: [usize; 2],
    window: usize,
    shift: usize,
    device: &Device,
) -> Tensor<3> {
    let region = |i: usize, size: usize| {
        if i < size - window {
            0
        } else if i < size - shift {
            1
        } else {
            2
        }
    };
    let tokens = window * window;
    let (rows, cols) = (hp / window, wp / window);
    let mut mask = Vec::with_capacity(rows * cols * tokens * tokens);
    for wy in 0..rows {
        for wx in 0..cols {
            let ids: Vec<usize> = (0..tokens)
                .map(|t| {
                    let (y, x) = (wy * window + t / window, wx * window + t % window);
                    region(y, hp) * 3 + region(x, wp)
                })
                .collect();
            for a in &ids {
                mask.extend(ids.iter().map(|b| if a == b { 0.0 } else { MASKED }));
            }
        }
    }
    Tensor::from_data(TensorData::new(mask, [rows * cols, tokens, tokens]), device)
}

#[derive(Debug)]
struct SwinBlock {
    norm1: LayerNorm,
    attention: WindowAttention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    window: usize,
    shift: usize,
}

impl SwinBlock {
    fn load(
        loader: &mut Loader,
        prefix: &str,
        width: usize,
        window: usize,
        shift: usize,
    ) -> Result<Self> {
        let norm1 = LayerNorm::load(loader, &format!("{prefix}.norm1"), width)?;
        let attention = WindowAttention::load(loader, &format!("{prefix}.attn"), width, window)?;
        let norm2 = LayerNorm::load(loader, &format!("{prefix}.norm2"), width)?;
        let hidden = loader.dims::<2>(&format!("{prefix}.mlp.fc1.weight"))?[0];
        Ok(Self {
            norm1,
            attention,
            norm2,
            fc1: Linear::load(loader, &format!("{prefix}.mlp.fc1"), width, hidden, true)?,
            fc2: Linear::load(loader, &format!("{prefix}.mlp.fc2"), hidden, width, true)?,
            window,
            shift,
        })
    }

    fn forward(&self, x: Tensor<3>, size: [usize; 2], mask: Option<&Tensor<3>>) -> Tensor<3> {
        let shortcut = x.clone();
        let normed = self.norm1.forward(x);
        let attended = match self.attention.cpu_qkv() {
            Some(qkv) => self
                .attention
                .forward_on_cpu(qkv, normed, size, self.window, self.shift),
            None => self.attention_in_windows(normed, size, mask),
        };
        let x = shortcut + attended;
        x.clone() + self.mlp(x, MAX_BINDING_BYTES)
    }

    /// The attention of `x` (`[B, L, C]`, normalised) as upstream computes it: padded, rolled
    /// and cut into windows, attended, and put back.
    fn attention_in_windows(
        &self,
        x: Tensor<3>,
        [h, w]: [usize; 2],
        mask: Option<&Tensor<3>>,
    ) -> Tensor<3> {
        let [batch, length, channels] = x.dims();
        let window = self.window;
        let [hp, wp] = [h.next_multiple_of(window), w.next_multiple_of(window)];
        let mut grid = pad_tokens(x.reshape([batch, h, w, channels]), [hp, wp]);
        let shift = self.shift as i64;
        if shift > 0 {
            grid = grid.roll(&[-shift, -shift], &[1, 2]);
        }
        let windows = grid
            .reshape([batch, hp / window, window, wp / window, window, channels])
            .permute([0, 1, 3, 2, 4, 5])
            .reshape([
                batch * (hp / window) * (wp / window),
                window * window,
                channels,
            ]);
        let attended = self
            .attention
            .forward(windows, batch, mask, MAX_BINDING_BYTES);
        let mut grid = attended
            .reshape([batch, hp / window, wp / window, window, window, channels])
            .permute([0, 1, 3, 2, 4, 5])
            .reshape([batch, hp, wp, channels]);
        if shift > 0 {
            grid = grid.roll(&[shift, shift], &[1, 2]);
        }
        if (hp, wp) != (h, w) {
            grid = grid.slice([0..batch, 0..h, 0..w, 0..channels]);
        }
        grid.reshape([batch, length, channels])
    }

    /// LayerNorm and the MLP, per token: in runs of tokens whose hidden activations take at
    /// most `max_bytes` (Swin-L's first stage at 1024²: 214 MB at once).
    fn mlp(&self, x: Tensor<3>, max_bytes: usize) -> Tensor<3> {
        let [batch, length, channels] = x.dims();
        let hidden = self.fc1.out_width;
        let run = (max_bytes / (batch * hidden * size_of::<f32>())).clamp(1, length);
        let mlp = |x: Tensor<3>| {
            self.fc2
                .forward(self.fc1.forward_then(self.norm2.forward(x), true))
        };
        if run >= length {
            return mlp(x);
        }
        let runs = (0..length)
            .step_by(run)
            .map(|start| {
                let end = (start + run).min(length);
                mlp(x.clone().slice([0..batch, start..end, 0..channels]))
            })
            .collect();
        Tensor::cat(runs, 1)
    }
}

/// Multi-head self-attention inside each window, with a learned bias per relative position.
#[derive(Debug)]
struct WindowAttention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
    /// `[1, heads, N, N]`, gathered from the bias table once at load.
    position_bias: Tensor<4>,
}

impl WindowAttention {
    fn load(loader: &mut Loader, prefix: &str, width: usize, window: usize) -> Result<Self> {
        let table_name = format!("{prefix}.relative_position_bias_table");
        let [rows, heads] = loader.dims(&table_name)?;
        if heads == 0 || !width.is_multiple_of(heads) {
            let found = vec![rows, heads];
            return Err(loader.shape_problem(&table_name, found.clone(), found));
        }
        let table = loader.state.take(&table_name, &[rows, heads])?;
        let index = relative_position_index(window);
        let tokens = window * window;
        // Upstream saves the index as a buffer; a file whose index differs was made for
        // another window layout.
        let index_name = format!("{prefix}.relative_position_index");
        if loader.state.contains(&index_name) {
            let saved = loader.state.take_indices(&index_name, &[tokens, tokens])?;
            if saved.iter().zip(&index).any(|(&s, &i)| s != i as i64) {
                let problem = TensorProblem::Values(format!("not the index of {window}² windows"));
                return Err(loader.state.problem(&index_name, problem));
            }
        }
        let mut bias = vec![0.0; heads * tokens * tokens];
        for head in 0..heads {
            for (pair, &row) in index.iter().enumerate() {
                bias[head * tokens * tokens + pair] = table[row * heads + head];
            }
        }
        Ok(Self {
            qkv: Linear::load(loader, &format!("{prefix}.qkv"), width, 3 * width, true)?,
            proj: Linear::load(loader, &format!("{prefix}.proj"), width, width, true)?,
            heads,
            position_bias: Tensor::from_data(
                TensorData::new(bias, [1, heads, tokens, tokens]),
                loader.device,
            ),
        })
    }

    /// `x`: `[B·nW, N, C]` windows of `batch` images; `mask`: `[nW, N, N]` for shifted ones.
    ///
    /// Windows are independent: they are attended in runs whose `qkv` and scores take at most
    /// `max_bytes` (Swin-L's first stage at 1024²: 484 windows of 144 tokens, 6 heads, 241 MB
    /// of scores at once).
    fn forward(
        &self,
        x: Tensor<3>,
        batch: usize,
        mask: Option<&Tensor<3>>,
        max_bytes: usize,
    ) -> Tensor<3> {
        let [windows, tokens, channels] = x.dims();
        let per_image = windows / batch;
        let per_window = (3 * channels).max(self.heads * tokens) * tokens * size_of::<f32>();
        let run = (max_bytes / per_window).clamp(1, per_image);
        if run >= per_image {
            return self.attend(x, batch, mask);
        }
        let mut runs = Vec::new();
        for image in 0..batch {
            for start in (0..per_image).step_by(run) {
                let end = (start + run).min(per_image);
                let first = image * per_image;
                let x = x
                    .clone()
                    .slice([first + start..first + end, 0..tokens, 0..channels]);
                let mask = mask.map(|m| m.clone().slice([start..end, 0..tokens, 0..tokens]));
                runs.push(self.attend(x, 1, mask.as_ref()));
            }
        }
        Tensor::cat(runs, 0)
    }

    /// On flex, where cutout's kernel takes these heads: the packed `qkv` projection.
    fn cpu_qkv(&self) -> Option<&PackedLinear> {
        match &self.qkv.weights {
            LinearImpl::Packed(qkv) if cpu_attention::supports(self.heads, qkv.in_width()) => {
                Some(qkv)
            }
            _ => None,
        }
    }

    /// On flex: the attention of `x` (`[B, L, C]` in image order) through cutout's kernel
    /// (`cpu_attention`), which makes the windows, shift and padding by indexing: the same
    /// result as [`SwinBlock::attention_in_windows`] without its copies.
    fn forward_on_cpu(
        &self,
        qkv: &PackedLinear,
        x: Tensor<3>,
        size: [usize; 2],
        window: usize,
        shift: usize,
    ) -> Tensor<3> {
        let [batch, length, channels] = x.dims();
        let x = flex_values(x.reshape([1, 1, batch * length, channels]));
        let rows = qkv.forward(x.as_slice(), false);
        let bias = flex_values(self.position_bias.clone());
        let windows = Windows {
            batch,
            size,
            window,
            shift,
            heads: self.heads,
            channels,
        };
        let out = window_attention(&rows, qkv.bias(), bias.as_slice(), windows);
        let out = from_flex_values(out, [1, 1, batch * length, channels]);
        self.proj.forward(out.reshape([batch, length, channels]))
    }

    /// [`WindowAttention::forward`] on windows that fit at once.
    fn attend(&self, x: Tensor<3>, batch: usize, mask: Option<&Tensor<3>>) -> Tensor<3> {
        let [windows, tokens, channels] = x.dims();
        let heads = self.heads;
        let head_width = channels / heads;
        let qkv = self
            .qkv
            .forward(x)
            .reshape([windows, tokens, 3, heads, head_width])
            .permute([2, 0, 3, 1, 4]);
        let part = |i: usize| {
            qkv.clone()
                .slice([i..i + 1, 0..windows, 0..heads, 0..tokens, 0..head_width])
                .reshape([windows, heads, tokens, head_width])
        };
        let (q, k, v) = (part(0), part(1), part(2));
        let scale = (head_width as f32).powf(-0.5);
        let mut scores = (q * scale).matmul(k.swap_dims(2, 3)) + self.position_bias.clone();
        if let Some(mask) = mask {
            let per_image = windows / batch;
            scores = (scores.reshape([batch, per_image, heads, tokens, tokens])
                + mask.clone().reshape([1, per_image, 1, tokens, tokens]))
            .reshape([windows, heads, tokens, tokens]);
        }
        let out = softmax(scores, 3)
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([windows, tokens, channels]);
        self.proj.forward(out)
    }
}

/// For each pair of tokens `(i, j)` of a window, the row of the bias table for their offset
/// (as upstream's `relative_position_index` buffer).
pub(crate) fn relative_position_index(window: usize) -> Vec<usize> {
    let tokens = window * window;
    let mut index = Vec::with_capacity(tokens * tokens);
    for i in 0..tokens {
        for j in 0..tokens {
            let dy = i / window + window - 1 - j / window;
            let dx = i % window + window - 1 - j % window;
            index.push(dy * (2 * window - 1) + dx);
        }
    }
    index
}

/// Halves the grid: each 2×2 neighbourhood's tokens concatenated (in upstream's order
/// `(0,0) (1,0) (0,1) (1,1)`), LayerNorm, and a linear map to twice the width.
#[derive(Debug)]
struct PatchMerging {
    norm: LayerNorm,
    reduction: Linear,
}

impl PatchMerging {
    fn load(loader: &mut Loader, prefix: &str, width: usize) -> Result<Self> {
        Ok(Self {
            norm: LayerNorm::load(loader, &format!("{prefix}.norm"), 4 * width)?,
            reduction: Linear::load(
                loader,
                &format!("{prefix}.reduction"),
                4 * width,
                2 * width,
                false,
            )?,
        })
    }

    fn out_width(&self) -> usize {
        self.reduction.out_width
    }

    fn forward(&self, x: Tensor<3>, [h, w]: [usize; 2]) -> Tensor<3> {
        let [batch, _, channels] = x.dims();
        let [h2, w2] = [h.div_ceil(2), w.div_ceil(2)];
        let grid = pad_tokens(x.reshape([batch, h, w, channels]), [2 * h2, 2 * w2]);
        let merged = grid
            .reshape([batch, h2, 2, w2, 2, channels])
            .permute([0, 1, 3, 4, 2, 5])
            .reshape([batch, h2 * w2, 4 * channels]);
        self.reduction.forward(self.norm.forward(merged))
    }
}

/// Zero-pads `[B, H, W, C]` at the bottom and right to `[B, hp, wp, C]`.
fn pad_tokens(x: Tensor<4>, [hp, wp]: [usize; 2]) -> Tensor<4> {
    let [batch, h, w, channels] = x.dims();
    let device = x.device();
    let mut x = x;
    if wp > w {
        let zeros = Tensor::zeros([batch, h, wp - w, channels], &device);
        x = Tensor::cat(vec![x, zeros], 2);
    }
    if hp > h {
        let zeros = Tensor::zeros([batch, hp - h, wp, channels], &device);
        x = Tensor::cat(vec![x, zeros], 1);
    }
    x
}

/// Zero-pads NCHW at the bottom and right to `[hp, wp]`.
fn pad_bottom_right(x: Tensor<4>, [hp, wp]: [usize; 2]) -> Tensor<4> {
    pad_tokens(x.permute([0, 2, 3, 1]), [hp, wp]).permute([0, 3, 1, 2])
}

#[derive(Debug)]
struct LayerNorm {
    gamma: Tensor<1>,
    beta: Tensor<1>,
}

impl LayerNorm {
    fn load(loader: &mut Loader, prefix: &str, width: usize) -> Result<Self> {
        Ok(Self {
            gamma: loader.tensor(&format!("{prefix}.weight"), [width])?,
            beta: loader.tensor(&format!("{prefix}.bias"), [width])?,
        })
    }

    fn width(&self) -> usize {
        self.gamma.dims()[0]
    }

    /// Normalises the last dimension of `[B, L, C]`.
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let (var, mean) = x.clone().var_mean_bias(2);
        let normalised = (x - mean) / (var + LAYER_NORM_EPS).sqrt();
        normalised * self.gamma.clone().unsqueeze::<3>() + self.beta.clone().unsqueeze::<3>()
    }
}

#[derive(Debug)]
struct Linear {
    in_width: usize,
    out_width: usize,
    weights: LinearImpl,
}

/// A linear layer's weights in the one form its device runs (both would double the
/// model's memory).
// One per layer: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum LinearImpl {
    /// `weight` is `[in, out]`: PyTorch's `[out, in]` transposed once at load.
    Burn {
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
    },
    /// On burn's flex backend, cutout's kernel replaces flex's matmul.
    Packed(PackedLinear),
}

impl Linear {
    fn load(
        loader: &mut Loader,
        prefix: &str,
        in_width: usize,
        out_width: usize,
        with_bias: bool,
    ) -> Result<Self> {
        let shape = [out_width, in_width];
        let weight = loader.state.take(&format!("{prefix}.weight"), &shape)?;
        let bias = match with_bias {
            true => Some(loader.state.take(&format!("{prefix}.bias"), &[out_width])?),
            false => None,
        };
        let device = loader.device;
        let weights = match loader.on_flex {
            true => LinearImpl::Packed(PackedLinear::new(&weight, shape, bias.as_deref())),
            false => LinearImpl::Burn {
                weight: Tensor::<2>::from_data(TensorData::new(weight, shape), device).transpose(),
                bias: bias.map(|b| Tensor::from_data(TensorData::new(b, [out_width]), device)),
            },
        };
        Ok(Self {
            in_width,
            out_width,
            weights,
        })
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_then(x, false)
    }

    /// The layer, then GELU if `with_gelu` (applied as the output is stored on flex).
    fn forward_then(&self, x: Tensor<3>, with_gelu: bool) -> Tensor<3> {
        let [batch, length, channels] = x.dims();
        debug_assert_eq!(channels, self.in_width);
        let out = self.out_width;
        let y = match &self.weights {
            LinearImpl::Packed(cpu) => {
                let x = flex_values(x.reshape([1, 1, batch * length, channels]));
                let y = cpu.forward(x.as_slice(), with_gelu);
                return from_flex_values(y, [1, 1, batch * length, out])
                    .reshape([batch, length, out]);
            }
            LinearImpl::Burn { weight, bias } => {
                let y = x.reshape([batch * length, channels]).matmul(weight.clone());
                match bias {
                    Some(bias) => y + bias.clone().unsqueeze::<2>(),
                    None => y,
                }
            }
        };
        let y = y.reshape([batch, length, out]);
        if with_gelu { gelu(y) } else { y }
    }
}

// ---------------------------------------------------------------------------------------
// Decoder (upstream's `Decoder`, `BasicDecBlk`, `ASPPDeformable`, `BasicLatBlk`,
// `SimpleConvs`)

#[derive(Debug)]
struct Decoder {
    /// `ipt_blk5` … `ipt_blk1`: the image as patches into each level, deepest first.
    inputs: Vec<SimpleConvs>,
    /// `decoder_block4` … `decoder_block1`.
    blocks: Vec<DecoderBlock>,
    /// `lateral_block4` … `lateral_block2`.
    laterals: Vec<Conv>,
    /// `gdt_convs_{4,3,2}` (3×3 conv, batch norm, ReLU) and `gdt_convs_attn_{4,3,2}` (1×1):
    /// the gradient attention gating the three deepest blocks' outputs.
    gradients: Vec<(Conv, Conv)>,
    /// `conv_out1.0` (1×1 to the logits), split by input: the decoder's channels, then those
    /// of the image branch (`ipt_blk1`).
    out_of_decoder: Conv,
    out_of_image: Conv,
}

impl Decoder {
    /// `levels`: the encoder's channels at each level, shallowest first.
    fn load(loader: &mut Loader, levels: Vec<usize>) -> Result<Self> {
        let mut inputs = Vec::new();
        let mut blocks = Vec::new();
        let mut laterals = Vec::new();
        let mut gradients = Vec::new();
        // The deepest level enters at the backbone's width, the others after the block and
        // lateral above them; each also takes its patch input's channels.
        let mut below = levels[3];
        for level in (1..=4).rev() {
            // The image cut into (2^(level+1))² patches of the level's size: 3·4^(level+1)
            // channels (3072 at the deepest level, 3 at the top).
            let patches = 3 << (2 * (level + 1));
            let input =
                SimpleConvs::load(loader, &format!("decoder.ipt_blk{}", level + 1), patches)?;
            let block_in = below + input.out_channels();
            let block = DecoderBlock::load(
                loader,
                &format!("decoder.decoder_block{level}"),
                block_in,
                None,
            )?;
            below = block.out_channels();
            if level > 1 {
                let lateral_in = levels[level - 2];
                let name = format!("decoder.lateral_block{level}.conv");
                laterals.push(loader.conv(&name, lateral_in, 1, Some(below), true)?);
                let gdt = format!("decoder.gdt_convs_{level}");
                let gdt_width = loader.out_channels(&format!("{gdt}.0.weight"))?;
                let conv = loader.conv_bn(
                    &format!("{gdt}.0"),
                    &format!("{gdt}.1"),
                    below,
                    3,
                    gdt_width,
                    true,
                )?;
                let attention = loader.conv(
                    &format!("decoder.gdt_convs_attn_{level}.0"),
                    gdt_width,
                    1,
                    Some(1),
                    true,
                )?;
                gradients.push((conv, attention));
            }
            inputs.push(input);
            blocks.push(block);
        }
        let top = SimpleConvs::load(loader, "decoder.ipt_blk1", 3)?;
        let out_in = below + top.out_channels();
        inputs.push(top);
        let out = loader.conv_weights("decoder.conv_out1.0", out_in, 1, 1, true)?;
        let (of_decoder, of_image) = out.weight.split_at(below);
        let split = |weight: &[f32], bias: f32| ConvWeights {
            shape: [1, weight.len(), 1, 1],
            weight: weight.to_vec(),
            bias: vec![bias],
            ..out.clone()
        };
        Ok(Self {
            inputs,
            blocks,
            laterals,
            gradients,
            out_of_decoder: loader.same_conv(split(of_decoder, out.bias[0])),
            out_of_image: loader.same_conv(split(of_image, 0.0)),
        })
    }

    /// `levels`: the encoder's four levels, shallowest first; returns the logits.
    fn forward(&self, image: Tensor<4>, mut levels: Vec<Tensor<4>>) -> Tensor<4> {
        let [_, _, h, w] = image.dims();
        let mut p = levels.pop().expect("four levels");
        for (i, block) in self.blocks.iter().enumerate() {
            let [_, _, ph, pw] = p.dims();
            let patches = self.inputs[i].forward(image_patches(image.clone(), [ph, pw]));
            p = block.forward(vec![p, patches]);
            // The last block has no gate and no skip: its output is resized to the image
            // below.
            if let (Some((conv, attention)), Some(skip)) = (self.gradients.get(i), levels.pop()) {
                let gate =
                    sigmoid(attention.forward(vec![conv.forward(vec![p.clone()], true)], false));
                p = p * gate;
                let [_, _, sh, sw] = skip.dims();
                p = resize(p, [sh, sw]) + self.laterals[i].forward(vec![skip], false);
            }
        }
        // Upstream resizes p to the image, concatenates the image branch (at the image's
        // size the patch grid is the image itself) and applies the 1×1 output convolution.
        // That convolution commutes with the resize (a bilinear resize's weights sum to
        // one), so p's share of it runs at p's size and one channel is resized, instead of
        // p's channels at the image's size (hundreds of MB at 1024²).
        let of_decoder = resize(self.out_of_decoder.forward(vec![p], false), [h, w]);
        let of_image = image_branch(
            &self.inputs[4],
            &self.out_of_image,
            image,
            MAX_BINDING_BYTES,
        );
        of_decoder + of_image
    }
}

/// Upstream's `image2patches(x, patch_ref)`: the image cut into a grid of patches the size
/// of `reference`, stacked as channels (`b c (hg h) (wg w) -> b (c hg wg) h w`), then
/// resized to `reference`'s size (a no-op when the grid divides the image).
fn image_patches(image: Tensor<4>, [rh, rw]: [usize; 2]) -> Tensor<4> {
    let [batch, channels, h, w] = image.dims();
    let (gh, gw) = (h / rh, w / rw);
    let (ph, pw) = (h / gh, w / gw);
    let patches = image
        .reshape([batch, channels, gh, ph, gw, pw])
        .permute([0, 1, 2, 4, 3, 5])
        .reshape([batch, channels * gh * gw, ph, pw]);
    resize(patches, [rh, rw])
}

/// `convs` and then the 1×1 `out` on the full-size `image`, in bands of rows whose widest
/// activation fits in `max_bytes` (at 1024² the branch's 64 channels are 268 MB, more than
/// WebGPU guarantees to bind). The two 3×3 convolutions read two rows beyond a band, so each
/// band is computed with two more rows on either side, which are then dropped.
fn image_branch(convs: &SimpleConvs, out: &Conv, image: Tensor<4>, max_bytes: usize) -> Tensor<4> {
    const HALO: usize = 2;
    let [batch, channels, h, w] = image.dims();
    let widest = convs.conv1.out_channels().max(convs.out_channels());
    let row_bytes = batch * widest * w * size_of::<f32>();
    let rows = (max_bytes / row_bytes.max(1))
        .saturating_sub(2 * HALO)
        .max(1);
    if rows >= h {
        return out.forward(vec![convs.forward(image)], false);
    }
    let bands = (0..h)
        .step_by(rows)
        .map(|top| {
            let bottom = (top + rows).min(h);
            let (from, to) = (top.saturating_sub(HALO), (bottom + HALO).min(h));
            let band = image.clone().slice([0..batch, 0..channels, from..to, 0..w]);
            let y = out.forward(vec![convs.forward(band)], false);
            y.slice([0..batch, 0..1, top - from..bottom - from, 0..w])
        })
        .collect();
    Tensor::cat(bands, 2)
}

/// Two 3×3 convolutions, no activation between them.
#[derive(Debug)]
struct SimpleConvs {
    conv1: Conv,
    conv_out: Conv,
}

impl SimpleConvs {
    fn load(loader: &mut Loader, prefix: &str, in_channels: usize) -> Result<Self> {
        let inner = loader.out_channels(&format!("{prefix}.conv1.weight"))?;
        let out = loader.out_channels(&format!("{prefix}.conv_out.weight"))?;
        Ok(Self {
            conv1: loader.conv(
                &format!("{prefix}.conv1"),
                in_channels,
                3,
                Some(inner),
                true,
            )?,
            conv_out: loader.conv(&format!("{prefix}.conv_out"), inner, 3, Some(out), true)?,
        })
    }

    fn out_channels(&self) -> usize {
        self.conv_out.out_channels()
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv_out
            .forward(vec![self.conv1.forward(vec![x], false)], false)
    }
}

/// `BasicDecBlk`: 3×3 conv + BN + ReLU, ASPP with deformable convolutions, 3×3 conv + BN.
#[derive(Debug)]
struct DecoderBlock {
    conv_in: Conv,
    aspp: AsppDeformable,
    conv_out: Conv,
}

impl DecoderBlock {
    fn load(
        loader: &mut Loader,
        prefix: &str,
        in_channels: usize,
        out: Option<usize>,
    ) -> Result<Self> {
        let inner = loader.out_channels(&format!("{prefix}.conv_in.weight"))?;
        let out = match out {
            Some(out) => out,
            None => loader.out_channels(&format!("{prefix}.conv_out.weight"))?,
        };
        Ok(Self {
            conv_in: loader.conv_bn(
                &format!("{prefix}.conv_in"),
                &format!("{prefix}.bn_in"),
                in_channels,
                3,
                inner,
                true,
            )?,
            aspp: AsppDeformable::load(loader, &format!("{prefix}.dec_att"), inner)?,
            conv_out: loader.conv_bn(
                &format!("{prefix}.conv_out"),
                &format!("{prefix}.bn_out"),
                inner,
                3,
                out,
                true,
            )?,
        })
    }

    fn out_channels(&self) -> usize {
        self.conv_out.out_channels()
    }

    /// The block on the channel-wise concatenation of `parts`.
    fn forward(&self, parts: Vec<Tensor<4>>) -> Tensor<4> {
        let x = self.conv_in.forward(parts, true);
        let x = self.aspp.forward(x);
        self.conv_out.forward(vec![x], false)
    }
}

/// Atrous spatial pyramid pooling with deformable branches: a 1×1 branch, deformable
/// branches of kernels 1, 3 and 7, and the global average; each BN + ReLU, concatenated and
/// fused by a 1×1 convolution (+ BN + ReLU). Dropout is the identity at inference.
#[derive(Debug)]
struct AsppDeformable {
    branches: Vec<DeformableConv>,
    pooled: Conv,
    fuse: Conv,
}

impl AsppDeformable {
    fn load(loader: &mut Loader, prefix: &str, in_channels: usize) -> Result<Self> {
        let planes =
            loader.out_channels(&format!("{prefix}.aspp1.atrous_conv.regular_conv.weight"))?;
        let mut branches = vec![DeformableConv::load(
            loader,
            &format!("{prefix}.aspp1"),
            in_channels,
            1,
            planes,
        )?];
        for (i, kernel) in [1, 3, 7].into_iter().enumerate() {
            let name = format!("{prefix}.aspp_deforms.{i}");
            branches.push(DeformableConv::load(
                loader,
                &name,
                in_channels,
                kernel,
                planes,
            )?);
        }
        let pooled = loader.conv_bn(
            &format!("{prefix}.global_avg_pool.1"),
            &format!("{prefix}.global_avg_pool.2"),
            in_channels,
            1,
            planes,
            false,
        )?;
        let fuse_out = loader.out_channels(&format!("{prefix}.conv1.weight"))?;
        let fuse = loader.conv_bn(
            &format!("{prefix}.conv1"),
            &format!("{prefix}.bn1"),
            planes * (branches.len() + 1),
            1,
            fuse_out,
            false,
        )?;
        Ok(Self {
            branches,
            pooled,
            fuse,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [batch, _, h, w] = x.dims();
        let mut parts: Vec<Tensor<4>> = self
            .branches
            .iter()
            .map(|branch| relu(branch.forward(x.clone())))
            .collect();
        let pooled = self
            .pooled
            .forward(vec![adaptive_avg_pool2d(x, [1, 1])], true);
        let planes = pooled.dims()[1];
        // A 1×1 map resized with align_corners is that value everywhere.
        parts.push(pooled.expand([batch, planes, h, w]));
        self.fuse.forward(parts, true)
    }
}

/// torchvision's modulated deformable convolution as upstream's `DeformableConv2d` drives
/// it: offsets from one convolution, a modulation mask `2·sigmoid` of another, batch norm
/// folded into the sampled convolution's weights.
#[derive(Debug)]
struct DeformableConv {
    offset: Conv,
    modulator: Conv,
    kernel: usize,
    sampled: DeformImpl,
}

/// The sampled convolution's weights in the one form its device runs.
// One per layer: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum DeformImpl {
    Burn {
        weight: Tensor<4>,
        bias: Tensor<1>,
    },
    /// On burn's flex backend, cutout's kernel replaces flex's.
    Packed(PackedDeformConv),
}

impl DeformableConv {
    fn load(
        loader: &mut Loader,
        prefix: &str,
        in_channels: usize,
        kernel: usize,
        planes: usize,
    ) -> Result<Self> {
        let conv = format!("{prefix}.atrous_conv");
        let taps = kernel * kernel;
        let offset = loader.conv(
            &format!("{conv}.offset_conv"),
            in_channels,
            kernel,
            Some(2 * taps),
            true,
        )?;
        let modulator = loader.conv(
            &format!("{conv}.modulator_conv"),
            in_channels,
            kernel,
            Some(taps),
            true,
        )?;
        let sampled = loader.conv_bn_weights(
            &format!("{conv}.regular_conv"),
            &format!("{prefix}.bn"),
            in_channels,
            kernel,
            planes,
            false,
        )?;
        let sampled = match loader.on_flex {
            true => DeformImpl::Packed(PackedDeformConv::new(
                &sampled.weight,
                sampled.shape,
                &sampled.bias,
            )),
            false => DeformImpl::Burn {
                weight: Tensor::from_data(
                    TensorData::new(sampled.weight, sampled.shape),
                    loader.device,
                ),
                bias: Tensor::from_data(TensorData::new(sampled.bias, [planes]), loader.device),
            },
        };
        Ok(Self {
            offset,
            modulator,
            kernel,
            sampled,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let offset = self.offset.forward(vec![x.clone()], false);
        let mask = sigmoid(self.modulator.forward(vec![x.clone()], false)) * 2.0;
        match &self.sampled {
            DeformImpl::Packed(cpu) => {
                let [batch, _, h, w] = x.dims();
                let (x, offset, mask) = (flex_values(x), flex_values(offset), flex_values(mask));
                let out = cpu.forward(
                    x.as_slice(),
                    offset.as_slice(),
                    mask.as_slice(),
                    batch,
                    [h, w],
                );
                from_flex_values(out, [batch, cpu.out_channels(), h, w])
            }
            DeformImpl::Burn { weight, bias } => {
                let pad = self.kernel / 2;
                let options = DeformConvOptions::new([1, 1], [pad, pad], [1, 1], 1, 1);
                deform_conv2d_in_slices(
                    x,
                    offset,
                    weight.clone(),
                    mask,
                    Some(bias.clone()),
                    options,
                    MAX_BINDING_BYTES,
                )
            }
        }
    }
}

/// burn's `deform_conv2d` builds `[channels·k², batch·h·w]` sampled columns (im2col): 822 MB
/// for the last decoder block's 7×7 kernel at 1024², more than a wgpu adapter binds as one
/// buffer (lavapipe fails to allocate it). The offsets and modulation are per tap and shared
/// by every input channel (one offset group), so the convolution is the sum of the
/// convolutions of slices of the input channels, each with columns of at most
/// `max_column_bytes`.
fn deform_conv2d_in_slices(
    x: Tensor<4>,
    offset: Tensor<4>,
    weight: Tensor<4>,
    mask: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: DeformConvOptions<2>,
    max_column_bytes: usize,
) -> Tensor<4> {
    let [planes, _, kernel_h, kernel_w] = weight.dims();
    let [batch, channels, h, w] = x.dims();
    let [_, _, out_h, out_w] = offset.dims();
    let column_bytes = channels * kernel_h * kernel_w * batch * out_h * out_w * size_of::<f32>();
    let slices = column_bytes.div_ceil(max_column_bytes).clamp(1, channels);
    let step = channels.div_ceil(slices);
    let mut sum: Option<Tensor<4>> = None;
    for start in (0..channels).step_by(step) {
        let end = (start + step).min(channels);
        let part = deform_conv2d(
            x.clone().slice([0..batch, start..end, 0..h, 0..w]),
            offset.clone(),
            weight
                .clone()
                .slice([0..planes, start..end, 0..kernel_h, 0..kernel_w]),
            Some(mask.clone()),
            None,
            options.clone(),
        );
        sum = Some(match sum {
            Some(sum) => sum + part,
            None => part,
        });
    }
    let sum = sum.expect("at least one input channel");
    match bias {
        Some(bias) => sum + bias.reshape([1, planes, 1, 1]),
        None => sum,
    }
}

/// Bilinear resize with `align_corners=True`, as every resize in upstream's BiRefNet.
fn resize(x: Tensor<4>, [h, w]: [usize; 2]) -> Tensor<4> {
    let [_, _, xh, xw] = x.dims();
    if (xh, xw) == (h, w) {
        return x;
    }
    let options = InterpolateOptions::new(InterpolateMode::Bilinear)
        .with_align_corners(true)
        .with_output_size([h, w]);
    interpolate(x, options)
}

// ---------------------------------------------------------------------------------------
// Loading

/// Takes tensors from the state dict onto the device, checking each one's shape.
struct Loader<'a> {
    state: &'a mut StateDict,
    device: &'a Device,
    on_flex: bool,
}

impl Loader<'_> {
    fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        let values = self.state.take(name, &shape)?;
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            self.device,
        ))
    }

    fn dims<const D: usize>(&self, name: &str) -> Result<[usize; D]> {
        let shape = self.state.shape(name)?;
        shape.clone().try_into().map_err(|_| {
            let mut expected = shape.clone();
            expected.resize(D, 0);
            self.shape_problem(name, shape, expected)
        })
    }

    /// The output channels of convolution weight `name`.
    fn out_channels(&self, name: &str) -> Result<usize> {
        Ok(self.dims::<4>(name)?[0])
    }

    fn shape_problem(&self, name: &str, found: Vec<usize>, expected: Vec<usize>) -> crate::Error {
        self.state
            .problem(name, TensorProblem::Shape { found, expected })
    }

    /// A "same"-padded stride-1 convolution `prefix.weight` (and `prefix.bias`).
    fn conv(
        &mut self,
        prefix: &str,
        in_channels: usize,
        kernel: usize,
        out: Option<usize>,
        with_bias: bool,
    ) -> Result<Conv> {
        let out = match out {
            Some(out) => out,
            None => self.out_channels(&format!("{prefix}.weight"))?,
        };
        let weights = self.conv_weights(prefix, in_channels, kernel, out, with_bias)?;
        Ok(self.same_conv(weights))
    }

    /// A convolution followed by batch norm `bn`, folded into one.
    fn conv_bn(
        &mut self,
        conv: &str,
        bn: &str,
        in_channels: usize,
        kernel: usize,
        out: usize,
        with_bias: bool,
    ) -> Result<Conv> {
        let weights = self.conv_bn_weights(conv, bn, in_channels, kernel, out, with_bias)?;
        Ok(self.same_conv(weights))
    }

    fn conv_weights(
        &mut self,
        prefix: &str,
        in_channels: usize,
        kernel: usize,
        out: usize,
        with_bias: bool,
    ) -> Result<ConvWeights> {
        let shape = [out, in_channels, kernel, kernel];
        let weight = self.state.take(&format!("{prefix}.weight"), &shape)?;
        let bias_name = format!("{prefix}.bias");
        // Batch norm folded in gives a bias even to a convolution that has none of its own.
        let folded_bias = self.state.batch_norm_folded() && self.state.contains(&bias_name);
        let bias = match with_bias || folded_bias {
            true => self.state.take(&bias_name, &[out])?,
            false => vec![0.0; out],
        };
        Ok(ConvWeights {
            shape,
            weight,
            bias,
            stride: 1,
            dilation: 1,
            padding: kernel / 2,
        })
    }

    fn conv_bn_weights(
        &mut self,
        conv: &str,
        bn: &str,
        in_channels: usize,
        kernel: usize,
        out: usize,
        with_bias: bool,
    ) -> Result<ConvWeights> {
        let mut weights = self.conv_weights(conv, in_channels, kernel, out, with_bias)?;
        // A model trained with batch size 1 has `nn.Identity` where the others have batch
        // norm (upstream: `BatchNorm2d(...) if config.batch_size > 1 else nn.Identity()`).
        if !self.state.contains(&format!("{bn}.weight")) {
            return Ok(weights);
        }
        let gamma = self.state.take(&format!("{bn}.weight"), &[out])?;
        let beta = self.state.take(&format!("{bn}.bias"), &[out])?;
        let mean = self.state.take(&format!("{bn}.running_mean"), &[out])?;
        let var = self.state.take(&format!("{bn}.running_var"), &[out])?;
        let per_output = weights.weight.len() / out;
        for o in 0..out {
            let scale = gamma[o] / (var[o] + BATCH_NORM_EPS).sqrt();
            for v in &mut weights.weight[o * per_output..(o + 1) * per_output] {
                *v *= scale;
            }
            weights.bias[o] = (weights.bias[o] - mean[o]) * scale + beta[o];
        }
        Ok(weights)
    }

    fn same_conv(&self, weights: ConvWeights) -> Conv {
        Conv::new(weights, self.device, self.on_flex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::max_abs_diff;
    use burn::tensor::Distribution;

    fn max_difference<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    /// The fixture's second block of the first stage (shifted windows, so with the mask):
    /// attention in runs of windows and the MLP in runs of tokens equal them at once.
    #[test]
    fn swin_attention_and_mlp_in_runs_are_the_whole_ones() {
        let device = Device::flex();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/birefnet/birefnet-tiny.safetensors"
        );
        let state = StateDict::open(std::path::Path::new(path)).unwrap();
        let model = BiRefNet::load(state, &device).unwrap();
        let stage = &model.backbone.stages[0];
        let block = &stage.blocks[1];
        let (window, batch, side) = (stage.window, 2, 14);
        let channels = block.fc1.in_width;
        let tokens = window * window;
        let per_image = (side / window) * (side / window);
        let mask = shifted_window_mask([side, side], window, block.shift, &device);
        let windows = Tensor::<3>::random(
            [batch * per_image, tokens, channels],
            Distribution::Uniform(-2.0, 2.0),
            &device,
        );
        let attend = |max_bytes| {
            block
                .attention
                .forward(windows.clone(), batch, Some(&mask), max_bytes)
        };
        let one_window = (3 * channels).max(block.attention.heads * tokens) * tokens * 4;
        let whole = attend(usize::MAX);
        for max_bytes in [one_window, 3 * one_window] {
            let error = max_difference(whole.clone(), attend(max_bytes));
            assert!(
                error < 1e-5,
                "attention in runs of {max_bytes} bytes: {error}"
            );
        }

        let x = Tensor::<3>::random(
            [batch, 37, channels],
            Distribution::Uniform(-2.0, 2.0),
            &device,
        );
        let hidden = block.fc1.out_width;
        let whole = block.mlp(x.clone(), usize::MAX);
        for tokens in [1, 5] {
            let error = max_difference(
                whole.clone(),
                block.mlp(x.clone(), tokens * batch * hidden * 4),
            );
            assert!(error < 1e-5, "MLP in runs of {tokens} tokens: {error}");
        }
    }

    /// cutout's window attention on flex (`cpu_attention`: windows, shift and padding by
    /// indexing) against upstream's sequence of tensor operations, on the fixture's blocks
    /// with and without the shift, on a grid that is not whole windows.
    #[test]
    fn window_attention_on_the_cpu_is_upstreams() {
        let device = Device::flex();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/birefnet/birefnet-tiny.safetensors"
        );
        let state = StateDict::open(std::path::Path::new(path)).unwrap();
        let model = BiRefNet::load(state, &device).unwrap();
        let stage = &model.backbone.stages[0];
        let (window, batch) = (stage.window, 2);
        let size = [2 * window + 3, window + 1];
        let [hp, wp] = size.map(|s| s.next_multiple_of(window));
        for block in &stage.blocks[..2] {
            let qkv = block
                .attention
                .cpu_qkv()
                .expect("cutout's attention on flex");
            let channels = block.fc1.in_width;
            let x = Tensor::<3>::random(
                [batch, size[0] * size[1], channels],
                Distribution::Uniform(-2.0, 2.0),
                &device,
            );
            let mask = shifted_window_mask([hp, wp], window, window / 2, &device);
            let mask = (block.shift > 0).then_some(&mask);
            let expected = block.attention_in_windows(x.clone(), size, mask);
            let found = block
                .attention
                .forward_on_cpu(qkv, x, size, window, block.shift);
            let error = max_difference(expected, found);
            assert!(error < 1e-5, "shift {}: {error}", block.shift);
        }
    }

    #[test]
    fn the_image_branch_in_bands_of_rows_is_the_whole_one() {
        let device = Device::flex();
        let mut seed = 1u32;
        let mut conv = |shape: [usize; 4], on_flex: bool| {
            let values = |n: usize, seed: &mut u32| -> Vec<f32> {
                (0..n)
                    .map(|_| {
                        *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        (*seed >> 8) as f32 / (1 << 24) as f32 - 0.5
                    })
                    .collect()
            };
            let weights = ConvWeights {
                shape,
                weight: values(shape.iter().product(), &mut seed),
                bias: values(shape[0], &mut seed),
                stride: 1,
                dilation: 1,
                padding: shape[2] / 2,
            };
            Conv::new(weights, &device, on_flex)
        };
        for on_flex in [true, false] {
            let convs = SimpleConvs {
                conv1: conv([6, 3, 3, 3], on_flex),
                conv_out: conv([5, 6, 3, 3], on_flex),
            };
            let out = conv([1, 5, 1, 1], on_flex);
            let image =
                Tensor::<4>::random([2, 3, 23, 17], Distribution::Uniform(0.0, 1.0), &device);
            let run = |max_bytes| {
                image_branch(&convs, &out, image.clone(), max_bytes)
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap()
            };
            let whole = run(usize::MAX);
            assert_eq!(whole.len(), 2 * 23 * 17);
            // Rows of 2 images × 6 channels × 17 columns: bands of 1, 3 and 7 rows.
            let row = 2 * 6 * 17 * 4;
            for rows in [1, 3, 7] {
                let banded = run((rows + 4) * row);
                let error = max_abs_diff(&whole, &banded);
                assert!(
                    error < 1e-5,
                    "bands of {rows} rows, on_flex {on_flex}: {error}"
                );
            }
        }
    }

    #[test]
    fn a_deformable_convolution_in_channel_slices_is_the_whole_one() {
        let device = Device::flex();
        let (batch, channels, planes, kernel, side) = (2, 7, 5, 3, 9);
        let random = |shape: [usize; 4]| {
            Tensor::<4>::random(shape, Distribution::Uniform(-1.0, 1.0), &device)
        };
        let x = random([batch, channels, side, side]);
        // Offsets of a few pixels, so that sampling points land between pixels and off the
        // edge.
        let offset = random([batch, 2 * kernel * kernel, side, side]) * 3.0;
        let mask = random([batch, kernel * kernel, side, side]);
        let weight = random([planes, channels, kernel, kernel]);
        let bias = Tensor::<1>::random([planes], Distribution::Uniform(-1.0, 1.0), &device);
        let options = DeformConvOptions::new([1, 1], [1, 1], [1, 1], 1, 1);
        let run = |max_column_bytes| {
            deform_conv2d_in_slices(
                x.clone(),
                offset.clone(),
                weight.clone(),
                mask.clone(),
                Some(bias.clone()),
                options.clone(),
                max_column_bytes,
            )
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
        };
        let whole = run(usize::MAX);
        // One channel's columns: 3·3 taps × 2·9·9 positions × 4 bytes; three slices.
        let column = kernel * kernel * batch * side * side * 4;
        for max in [3 * column, column] {
            let sliced = run(max);
            let error = max_abs_diff(&whole, &sliced);
            assert!(error < 1e-5, "{max}: {error}");
        }
    }

    #[test]
    fn relative_position_index_matches_upstreams_formula() {
        // Upstream, window 2: coords (0,0) (0,1) (1,0) (1,1); index = (dy+1)·3 + (dx+1).
        assert_eq!(
            relative_position_index(2),
            vec![4, 3, 1, 0, 5, 4, 2, 1, 7, 6, 4, 3, 8, 7, 5, 4]
        );
    }

    #[test]
    fn shifted_window_mask_separates_wrapped_regions() {
        // One 4×4 image, window 2, shift 1: the bottom-right window holds tokens of four
        // regions after the shift; the top-left window one.
        let mask = shifted_window_mask([4, 4], 2, 1, &Device::flex());
        let values = mask.into_data().try_into_vec::<f32>().unwrap();
        let window = |i: usize| &values[i * 16..(i + 1) * 16];
        assert!(window(0).iter().all(|&v| v == 0.0));
        let last = window(3);
        for a in 0..4 {
            for b in 0..4 {
                let expected = if a == b { 0.0 } else { MASKED };
                assert_eq!(last[a * 4 + b], expected, "tokens {a}, {b}");
            }
        }
    }
}
