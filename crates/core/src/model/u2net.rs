//! The U²-Net family (u2net, u2netp, u2net_human_seg, silueta) as burn modules.
//!
//! Architecture (Qin et al. 2020): six encoder stages of residual U-blocks (RSU-7, 6, 5, 4,
//! 4F, 4F) with 2×2 max-pooling between them, five decoder stages mirroring them, a 3×3 side
//! convolution on each decoder output, and a 1×1 convolution fusing the six upsampled side
//! maps. The first output, `sigmoid(fused)`, is the mask. Variants differ only in channel
//! widths, which are taken from the weights, so one module serves them all.

use burn::module::{Module, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::module::{interpolate, max_pool2d};
use burn::tensor::ops::{InterpolateMode, InterpolateOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor, TensorData};

use super::onnx::ConvWeights;
use crate::error::{Error, Result};

#[derive(Module, Debug)]
pub struct U2Net {
    encoder: Vec<Rsu>,
    decoder: Vec<Rsu>,
    sides: Vec<Conv2d>,
    fuse: Conv2d,
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
        let fuse = source.next(6 * out_channels(&sides[0]), 1, 1)?;
        source.finish()?;
        Ok(Self {
            encoder,
            decoder,
            sides,
            fuse,
        })
    }

    /// `[N, 3, H, W]` normalised images → `[N, 1, H, W]` foreground probability.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut skips = Vec::with_capacity(6);
        let mut hx = x;
        for (i, stage) in self.encoder.iter().enumerate() {
            if i > 0 {
                hx = pool(hx);
            }
            hx = stage.forward(hx);
            skips.push(hx.clone());
        }
        let deepest = skips.pop().expect("six encoder stages");

        let mut decoded = Vec::with_capacity(5);
        let mut hd = deepest.clone();
        for stage in &self.decoder {
            let skip = skips.pop().expect("one skip per decoder stage");
            hd = stage.forward(Tensor::cat(vec![upsample_like(hd, &skip), skip], 1));
            decoded.push(hd.clone());
        }

        let full = decoded.last().expect("five decoder stages").clone();
        let side_inputs = decoded.into_iter().rev().chain([deepest]);
        let side_maps = self
            .sides
            .iter()
            .zip(side_inputs)
            .map(|(side, input)| upsample_like(side.forward(input), &full))
            .collect();
        sigmoid(self.fuse.forward(Tensor::cat(side_maps, 1)))
    }
}

/// Residual U-block. RSU-L runs L-1 encoder convolutions with pooling between them, a dilated
/// bottom convolution, and L-2 decoder convolutions that upsample back; RSU-4F keeps the
/// resolution and widens the dilation instead. The output adds the block's input projection.
#[derive(Module, Debug)]
pub struct Rsu {
    input: ConvRelu,
    encoder: Vec<ConvRelu>,
    bottom: ConvRelu,
    decoder: Vec<ConvRelu>,
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
        let input = ConvRelu {
            conv: source.next(in_channels, 3, 1)?,
        };
        let out = out_channels(&input.conv);
        let mut encoder = Vec::new();
        let mut channels = out;
        for level in 0..height - 1 {
            let conv = ConvRelu {
                conv: source.next(channels, 3, dilation(level))?,
            };
            channels = out_channels(&conv.conv);
            encoder.push(conv);
        }
        let bottom_dilation = if dilated { 1 << (height - 1) } else { 2 };
        let bottom = ConvRelu {
            conv: source.next(channels, 3, bottom_dilation)?,
        };
        let mut decoder = Vec::new();
        let mut below = out_channels(&bottom.conv);
        for level in (0..height - 1).rev() {
            let skip = out_channels(&encoder[level].conv);
            let conv = ConvRelu {
                conv: source.next(below + skip, 3, dilation(level))?,
            };
            below = out_channels(&conv.conv);
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
        out_channels(&self.input.conv)
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let residual = self.input.forward(x);
        let mut skips = Vec::with_capacity(self.encoder.len());
        let mut hx = residual.clone();
        for (level, conv) in self.encoder.iter().enumerate() {
            if level > 0 && self.pooled {
                hx = pool(hx);
            }
            hx = conv.forward(hx);
            skips.push(hx.clone());
        }
        let mut hd = self.bottom.forward(hx);
        for conv in &self.decoder {
            let skip = skips.pop().expect("one skip per decoder level");
            hd = conv.forward(Tensor::cat(vec![upsample_like(hd, &skip), skip], 1));
        }
        hd + residual
    }
}

/// Convolution (batch-norm folded in) followed by ReLU: U²-Net's REBNCONV.
#[derive(Module, Debug)]
pub struct ConvRelu {
    conv: Conv2d,
}

impl ConvRelu {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        relu(self.conv.forward(x))
    }
}

fn pool(x: Tensor<4>) -> Tensor<4> {
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
    let options = InterpolateOptions::new(InterpolateMode::Bilinear)
        .with_align_corners(false)
        .with_output_size([h, w]);
    interpolate(x, options)
}

fn out_channels(conv: &Conv2d) -> usize {
    conv.weight.dims()[0]
}

/// Hands out the file's convolutions in order, checking each against what the architecture
/// expects at that point.
struct ConvSource<'a> {
    convs: std::vec::IntoIter<ConvWeights>,
    index: usize,
    device: &'a Device,
}

impl<'a> ConvSource<'a> {
    fn new(convs: Vec<ConvWeights>, device: &'a Device) -> Self {
        Self {
            convs: convs.into_iter(),
            index: 0,
            device,
        }
    }

    fn next(&mut self, in_channels: usize, kernel: usize, dilation: usize) -> Result<Conv2d> {
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
        let p = c.padding;
        Ok(Conv2d {
            weight: Param::from_data(TensorData::new(c.weight, c.shape), self.device),
            bias: Some(Param::from_data(
                TensorData::new(c.bias, [out]),
                self.device,
            )),
            stride: [1, 1],
            kernel_size: [kh, kw],
            dilation: [dilation, dilation],
            groups: 1,
            padding: PaddingConfig2d::Explicit(p, p, p, p),
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
