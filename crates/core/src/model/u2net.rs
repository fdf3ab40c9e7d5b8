//! The U²-Net family (u2net, u2netp, u2net_human_seg, silueta) on burn tensors.
//!
//! Architecture (Qin et al. 2020): six encoder stages of residual U-blocks (RSU-7, 6, 5, 4,
//! 4F, 4F) with 2×2 max-pooling between them, five decoder stages mirroring them, a 3×3 side
//! convolution on each decoder output, and a 1×1 convolution fusing the six upsampled side
//! maps. The first output, `sigmoid(fused)`, is the mask. Variants differ only in channel
//! widths, which are taken from the weights, so one network type serves them all.

use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::module::{conv2d, interpolate, max_pool2d};
use burn::tensor::ops::{ConvOptions, InterpolateMode, InterpolateOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor, TensorData};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::cpu_conv::{PackedConv, Planes};
use super::cpu_resample::{max_pool_2x2, resize_bilinear};
use super::onnx::ConvWeights;
use crate::error::{Error, Result};

#[derive(Debug)]
pub struct U2Net {
    encoder: Vec<Rsu>,
    decoder: Vec<Rsu>,
    sides: Vec<Conv>,
    fuse: Conv,
}

impl U2Net {
    /// Builds the network from convolution weights listed in execution order (as an ONNX
    /// export lists them), checking each against the architecture.
    pub fn from_convolutions(convs: Vec<ConvWeights>, device: &Device) -> Result<Self> {
        let mut source = ConvSource::new(convs, device);
        let mut channels = 3;
        let mut encoder = Vec::new();
        for (height, dilated) in [
            (7, false),
            (6, false),
            (5, false),
            (4, false),
            (4, true),
            (4, true),
        ] {
            let stage = Rsu::load(&mut source, height, dilated, channels)?;
            channels = stage.out_channels();
            encoder.push(stage);
        }
        let mut decoder = Vec::new();
        for (i, (height, dilated)) in [(4, true), (4, false), (5, false), (6, false), (7, false)]
            .into_iter()
            .enumerate()
        {
            let skip = encoder[4 - i].out_channels();
            let stage = Rsu::load(&mut source, height, dilated, channels + skip)?;
            channels = stage.out_channels();
            decoder.push(stage);
        }
        // Side outputs read decoder stages 1..5 (last decoded first) and encoder stage 6.
        let side_inputs = decoder
            .iter()
            .rev()
            .map(Rsu::out_channels)
            .chain([encoder[5].out_channels()])
            .collect::<Vec<_>>();
        let mut sides = Vec::new();
        for input in side_inputs {
            sides.push(source.next(input, 3, 1)?);
        }
        let fuse = source.next(6 * sides[0].out_channels(), 1, 1)?;
        source.finish()?;
        Ok(Self {
            encoder,
            decoder,
            sides,
            fuse,
        })
    }

    /// `[N, 3, H, W]` normalised images → `[N, 1, H, W]` foreground probability.
    ///
    /// On flex the images of a batch run side by side, each through the whole network,
    /// instead of every operation splitting one batch across the cores: each image's
    /// activations stay in its own core's cache. Per image, batch 8 went from 0.86× to
    /// 1.09× the throughput of batch 1 on two cores (`benches/remove.rs`).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let batch = x.dims()[0];
        if batch > 1 && on_flex(&x) {
            let masks: Vec<Tensor<4>> = x
                .chunk(batch, 0)
                .into_par_iter()
                .map(|image| self.forward_images(image))
                .collect();
            return Tensor::cat(masks, 0);
        }
        self.forward_images(x)
    }

    fn forward_images(&self, x: Tensor<4>) -> Tensor<4> {
        let mut skips = Vec::with_capacity(6);
        let mut hx = x;
        for (i, stage) in self.encoder.iter().enumerate() {
            if i > 0 {
                hx = pool(hx);
            }
            hx = stage.forward(vec![hx]);
            skips.push(hx.clone());
        }
        let deepest = skips.pop().expect("six encoder stages");

        let mut decoded = Vec::with_capacity(5);
        let mut hd = deepest.clone();
        for stage in &self.decoder {
            let skip = skips.pop().expect("one skip per decoder stage");
            hd = stage.forward(vec![upsample_like(hd, &skip), skip]);
            decoded.push(hd.clone());
        }

        let full = decoded.last().expect("five decoder stages").clone();
        let side_inputs = decoded.into_iter().rev().chain([deepest]);
        let side_maps = self
            .sides
            .iter()
            .zip(side_inputs)
            .map(|(side, input)| upsample_like(side.forward(vec![input], false), &full))
            .collect();
        sigmoid(self.fuse.forward(side_maps, false))
    }
}

/// Residual U-block. RSU-L runs L-1 encoder convolutions with pooling between them, a dilated
/// bottom convolution, and L-2 decoder convolutions that upsample back; RSU-4F keeps the
/// resolution and widens the dilation instead. The output adds the block's input projection.
/// Every convolution is followed by ReLU (U²-Net's REBNCONV, batch-norm folded in).
#[derive(Debug)]
pub struct Rsu {
    input: Conv,
    encoder: Vec<Conv>,
    bottom: Conv,
    decoder: Vec<Conv>,
    pooled: bool,
}

impl Rsu {
    fn load(
        source: &mut ConvSource,
        height: usize,
        dilated: bool,
        in_channels: usize,
    ) -> Result<Self> {
        let dilation = |level: usize| if dilated { 1 << level } else { 1 };
        let input = source.next(in_channels, 3, 1)?;
        let out = input.out_channels();
        let mut encoder = Vec::new();
        let mut channels = out;
        for level in 0..height - 1 {
            let conv = source.next(channels, 3, dilation(level))?;
            channels = conv.out_channels();
            encoder.push(conv);
        }
        let bottom_dilation = if dilated { 1 << (height - 1) } else { 2 };
        let bottom = source.next(channels, 3, bottom_dilation)?;
        let mut decoder = Vec::new();
        let mut below = bottom.out_channels();
        for level in (0..height - 1).rev() {
            let skip = encoder[level].out_channels();
            let conv = source.next(below + skip, 3, dilation(level))?;
            below = conv.out_channels();
            decoder.push(conv);
        }
        if below != out {
            return Err(Error::InvalidModel(format!(
                "RSU-{height}: output has {below} channels, its residual {out}"
            )));
        }
        Ok(Self {
            input,
            encoder,
            bottom,
            decoder,
            pooled: !dilated,
        })
    }

    fn out_channels(&self) -> usize {
        self.input.out_channels()
    }

    /// Runs the block on the channel-wise concatenation of `inputs`.
    fn forward(&self, inputs: Vec<Tensor<4>>) -> Tensor<4> {
        let residual = self.input.forward(inputs, true);
        let mut skips = Vec::with_capacity(self.encoder.len());
        let mut hx = residual.clone();
        for (level, conv) in self.encoder.iter().enumerate() {
            if level > 0 && self.pooled {
                hx = pool(hx);
            }
            hx = conv.forward(vec![hx], true);
            skips.push(hx.clone());
        }
        let mut hd = self.bottom.forward(vec![hx], true);
        for conv in &self.decoder {
            let skip = skips.pop().expect("one skip per decoder level");
            hd = conv.forward(vec![upsample_like(hd, &skip), skip], true);
        }
        hd + residual
    }
}

/// A stride-1 convolution with "same" zero padding.
#[derive(Debug)]
struct Conv {
    weight: Tensor<4>,
    bias: Tensor<1>,
    dilation: usize,
    /// Set when the model runs on burn's flex backend, where cutout's direct kernel
    /// (`cpu_conv`) replaces flex's im2col convolution.
    cpu: Option<PackedConv>,
}

impl Conv {
    fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Convolves the channel-wise concatenation of `inputs`, optionally through ReLU.
    fn forward(&self, mut inputs: Vec<Tensor<4>>, with_relu: bool) -> Tensor<4> {
        if let Some(cpu) = &self.cpu {
            return forward_on_flex(cpu, inputs, with_relu);
        }
        let x = match inputs.len() {
            1 => inputs.pop().expect("one input"),
            _ => Tensor::cat(inputs, 1),
        };
        let kernel = self.weight.dims()[2];
        let pad = self.dilation * (kernel - 1) / 2;
        let options = ConvOptions::new([1, 1], [pad, pad], [self.dilation, self.dilation], 1);
        let y = conv2d(x, self.weight.clone(), Some(self.bias.clone()), options);
        if with_relu { relu(y) } else { y }
    }
}

fn forward_on_flex(conv: &PackedConv, inputs: Vec<Tensor<4>>, relu: bool) -> Tensor<4> {
    let [batch, _, h, w] = inputs[0].dims();
    let tensors: Vec<FlexTensor> = inputs.into_iter().map(into_flex).collect();
    let parts: Vec<Planes> = tensors
        .iter()
        .map(|t| Planes {
            data: values_of(t),
            channels: t.layout().shape()[1],
        })
        .collect();
    let out = conv.forward(&parts, batch, [h, w], relu);
    from_values(out, [batch, conv.out_channels(), h, w])
}

fn on_flex(x: &Tensor<4>) -> bool {
    x.device() == Device::flex()
}

/// The tensor's flex storage, made contiguous if it is a view.
fn into_flex(x: Tensor<4>) -> FlexTensor {
    let t = x
        .try_into_primitive::<Flex>()
        .expect("tensors of a model loaded on flex stay on flex");
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

fn values_of(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 tensor")
}

fn from_values(values: Vec<f32>, shape: [usize; 4]) -> Tensor<4> {
    Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(values, shape)))
}

/// 2×2 max-pooling, ceil mode.
fn pool(x: Tensor<4>) -> Tensor<4> {
    if on_flex(&x) {
        let [n, c, h, w] = x.dims();
        let (pooled, [ph, pw]) = max_pool_2x2(values_of(&into_flex(x)), n * c, [h, w]);
        return from_values(pooled, [n, c, ph, pw]);
    }
    max_pool2d(x, MaxPoolOptions::new([2, 2]).with_ceil_mode(true))
}

/// Bilinear resize to `reference`'s size with half-pixel centres (PyTorch's
/// `align_corners=False`, ONNX `pytorch_half_pixel`).
fn upsample_like(x: Tensor<4>, reference: &Tensor<4>) -> Tensor<4> {
    let [_, _, h, w] = reference.dims();
    let [_, _, xh, xw] = x.dims();
    if (xh, xw) == (h, w) {
        return x;
    }
    if on_flex(&x) {
        let [n, c, _, _] = x.dims();
        let resized = resize_bilinear(values_of(&into_flex(x)), n * c, [xh, xw], [h, w]);
        return from_values(resized, [n, c, h, w]);
    }
    let options = InterpolateOptions::new(InterpolateMode::Bilinear)
        .with_align_corners(false)
        .with_output_size([h, w]);
    interpolate(x, options)
}

/// Hands out the file's convolutions in order, checking each against what the architecture
/// expects at that point.
struct ConvSource<'a> {
    convs: std::vec::IntoIter<ConvWeights>,
    index: usize,
    device: &'a Device,
    on_flex: bool,
}

impl<'a> ConvSource<'a> {
    fn new(convs: Vec<ConvWeights>, device: &'a Device) -> Self {
        let probe = Tensor::<1>::zeros([1], device);
        Self {
            convs: convs.into_iter(),
            index: 0,
            device,
            on_flex: probe.try_into_primitive::<Flex>().is_ok(),
        }
    }

    fn next(&mut self, in_channels: usize, kernel: usize, dilation: usize) -> Result<Conv> {
        let index = self.index;
        self.index += 1;
        let c = self.convs.next().ok_or_else(|| {
            Error::InvalidModel(format!(
                "the file has only {index} convolutions, U²-Net needs more"
            ))
        })?;
        let [out, input, kh, kw] = c.shape;
        let expected_padding = dilation * (kernel - 1) / 2;
        if input != in_channels
            || (kh, kw) != (kernel, kernel)
            || c.dilation != dilation
            || c.stride != 1
            || c.padding != expected_padding
        {
            return Err(Error::InvalidModel(format!(
                "convolution #{index}: expected {in_channels} input channels, {kernel}x{kernel} \
                 kernel, dilation {dilation}, stride 1; the file has {input} channels, {kh}x{kw}, \
                 dilation {}, stride {} (not a U²-Net model?)",
                c.dilation, c.stride
            )));
        }
        let cpu = self
            .on_flex
            .then(|| PackedConv::new(&c.weight, c.shape, &c.bias, dilation));
        Ok(Conv {
            weight: Tensor::from_data(TensorData::new(c.weight, c.shape), self.device),
            bias: Tensor::from_data(TensorData::new(c.bias, [out]), self.device),
            dilation,
            cpu,
        })
    }

    fn finish(mut self) -> Result<()> {
        match self.convs.next() {
            None => Ok(()),
            Some(_) => Err(Error::InvalidModel(format!(
                "the file has more than the {} convolutions U²-Net uses",
                self.index
            ))),
        }
    }
}
