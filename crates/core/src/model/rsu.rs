//! The building blocks U²-Net and IS-Net share: the nested U of residual U-blocks, the
//! blocks themselves, and the convolution, pooling and resize they are made of.
//!
//! On burn's flex backend (no GPU) the convolutions, pooling and resizing run on cutout's own
//! CPU kernels (`cpu_conv`, `cpu_resample`), reading and writing flex's tensor storage; on
//! wgpu they are burn's.

use burn::tensor::activation::relu;
use burn::tensor::module::{conv2d, interpolate, max_pool2d};
use burn::tensor::ops::{ConvOptions, InterpolateMode, InterpolateOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor, TensorData};

use super::cpu_conv::{PackedConv, Planes};
use super::cpu_resample::{max_pool_2x2, resize_bilinear};
use super::onnx::ConvWeights;
use crate::backend::{flex_values, from_flex_values};
use crate::error::{Error, Result};

/// Six encoder stages of residual U-blocks (RSU-7, 6, 5, 4, 4F, 4F) with 2×2 max-pooling
/// between them, and five decoder stages mirroring them, each fed the upsampled stage below
/// and the encoder's skip at its level. Both U²-Net and IS-Net are built around this.
#[derive(Debug)]
pub struct NestedU {
    encoder: Vec<Rsu>,
    decoder: Vec<Rsu>,
}

/// What the decoder produced: each decoder stage's output, deepest first, and the bottom
/// encoder stage (which also feeds a side output).
pub struct Decoded {
    pub stages: Vec<Tensor<4>>,
    pub deepest: Tensor<4>,
}

impl NestedU {
    pub fn load(source: &mut ConvSource, in_channels: usize) -> Result<Self> {
        let mut channels = in_channels;
        let mut encoder = Vec::new();
        for (height, dilated) in [
            (7, false),
            (6, false),
            (5, false),
            (4, false),
            (4, true),
            (4, true),
        ] {
            let stage = Rsu::load(source, height, dilated, channels)?;
            channels = stage.out_channels();
            encoder.push(stage);
        }
        let mut decoder = Vec::new();
        for (i, (height, dilated)) in [(4, true), (4, false), (5, false), (6, false), (7, false)]
            .into_iter()
            .enumerate()
        {
            let skip = encoder[4 - i].out_channels();
            let stage = Rsu::load(source, height, dilated, channels + skip)?;
            channels = stage.out_channels();
            decoder.push(stage);
        }
        Ok(Self { encoder, decoder })
    }

    /// Channels of the side-output inputs, in the order the networks list their side
    /// convolutions: decoder stages from the full-resolution one up, then the deepest encoder
    /// stage.
    pub fn side_channels(&self) -> Vec<usize> {
        self.decoder
            .iter()
            .rev()
            .map(Rsu::out_channels)
            .chain([self.encoder[5].out_channels()])
            .collect()
    }

    pub fn forward(&self, x: Tensor<4>) -> Decoded {
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

        let mut stages = Vec::with_capacity(5);
        let mut hd = deepest.clone();
        for stage in &self.decoder {
            let skip = skips.pop().expect("one skip per decoder stage");
            hd = stage.forward(vec![upsample_like(hd, &skip), skip]);
            stages.push(hd.clone());
        }
        Decoded { stages, deepest }
    }
}

/// Residual U-block. RSU-L runs L-1 encoder convolutions with pooling between them, a dilated
/// bottom convolution, and L-2 decoder convolutions that upsample back; RSU-4F keeps the
/// resolution and widens the dilation instead. The output adds the block's input projection.
/// Every convolution is followed by ReLU (U²-Net's REBNCONV, batch-norm folded in).
#[derive(Debug)]
struct Rsu {
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

/// A convolution with "same" zero padding (halving the size at stride 2).
#[derive(Debug)]
pub struct Conv {
    out: usize,
    kernel: usize,
    dilation: usize,
    stride: usize,
    weights: ConvImpl,
}

/// A convolution's weights in the one form its device runs: packed for cutout's kernel on
/// burn's flex backend (stride 1), burn tensors elsewhere. Keeping both would double the
/// model's memory (880 MB more for BiRefNet's Swin-L).
// One per layer: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum ConvImpl {
    Burn { weight: Tensor<4>, bias: Tensor<1> },
    Packed(PackedConv),
}

impl Conv {
    /// `on_flex`: the device is burn's flex backend, where stride-1 convolutions run on
    /// cutout's own kernel.
    pub fn new(c: ConvWeights, device: &Device, on_flex: bool) -> Self {
        let [out, _, kernel, _] = c.shape;
        let weights = match on_flex && c.stride == 1 {
            true => ConvImpl::Packed(PackedConv::new(&c.weight, c.shape, &c.bias, c.dilation)),
            false => ConvImpl::Burn {
                weight: Tensor::from_data(TensorData::new(c.weight, c.shape), device),
                bias: Tensor::from_data(TensorData::new(c.bias, [out]), device),
            },
        };
        Conv {
            out,
            kernel,
            dilation: c.dilation,
            stride: c.stride,
            weights,
        }
    }

    pub fn out_channels(&self) -> usize {
        self.out
    }

    /// Convolves the channel-wise concatenation of `inputs`, optionally through ReLU.
    pub fn forward(&self, inputs: Vec<Tensor<4>>, with_relu: bool) -> Tensor<4> {
        match &self.weights {
            ConvImpl::Packed(cpu) => forward_on_flex(cpu, inputs, with_relu),
            ConvImpl::Burn { weight, bias } => {
                self.forward_on_device(weight, bias, inputs, with_relu, MAX_BINDING_BYTES)
            }
        }
    }

    /// burn's convolution, concatenating `inputs` only if that takes at most
    /// `max_concatenated_bytes`.
    fn forward_on_device(
        &self,
        weight: &Tensor<4>,
        bias: &Tensor<1>,
        mut inputs: Vec<Tensor<4>>,
        with_relu: bool,
        max_concatenated_bytes: usize,
    ) -> Tensor<4> {
        let (out, kernel) = (self.out, self.kernel);
        let pad = self.dilation * (kernel - 1) / 2;
        let options = ConvOptions::new(
            [self.stride, self.stride],
            [pad, pad],
            [self.dilation, self.dilation],
            1,
        );
        let concatenated_bytes: usize = inputs
            .iter()
            .map(|part| part.dims().iter().product::<usize>() * size_of::<f32>())
            .sum();
        let y = if inputs.len() == 1 || concatenated_bytes <= max_concatenated_bytes {
            let x = match inputs.len() {
                1 => inputs.pop().expect("one input"),
                _ => Tensor::cat(inputs, 1),
            };
            conv2d(x, weight.clone(), Some(bias.clone()), options)
        } else {
            // A convolution is linear in its input channels: the sum of each part's
            // convolution with its slice of the weights, without the concatenation.
            let mut first = 0;
            let mut sum: Option<Tensor<4>> = None;
            for part in inputs {
                let channels = part.dims()[1];
                let weight =
                    weight
                        .clone()
                        .slice([0..out, first..first + channels, 0..kernel, 0..kernel]);
                first += channels;
                let y = conv2d(part, weight, None, options.clone());
                sum = Some(match sum {
                    Some(sum) => sum + y,
                    None => y,
                });
            }
            sum.expect("several inputs") + bias.clone().reshape([1, out, 1, 1])
        };
        if with_relu { relu(y) } else { y }
    }
}

/// The largest buffer WebGPU guarantees every adapter binds (`max_storage_buffer_binding_size`'s
/// default, and lavapipe's limit): larger tensors fail to allocate on such adapters.
pub const MAX_BINDING_BYTES: usize = 128 << 20;

fn forward_on_flex(conv: &PackedConv, inputs: Vec<Tensor<4>>, relu: bool) -> Tensor<4> {
    let [batch, _, h, w] = inputs[0].dims();
    let tensors: Vec<_> = inputs.into_iter().map(flex_values).collect();
    let parts: Vec<Planes> = tensors
        .iter()
        .map(|t| Planes {
            data: t.as_slice(),
            channels: t.dim(1),
        })
        .collect();
    let out = conv.forward(&parts, batch, [h, w], relu);
    from_flex_values(out, [batch, conv.out_channels(), h, w])
}

pub fn on_flex(x: &Tensor<4>) -> bool {
    crate::backend::on_flex(&x.device())
}

/// 2×2 max-pooling, ceil mode.
fn pool(x: Tensor<4>) -> Tensor<4> {
    if on_flex(&x) {
        let [n, c, h, w] = x.dims();
        let (pooled, [ph, pw]) = max_pool_2x2(flex_values(x).as_slice(), n * c, [h, w]);
        return from_flex_values(pooled, [n, c, ph, pw]);
    }
    max_pool2d(x, MaxPoolOptions::new([2, 2]).with_ceil_mode(true))
}

/// Bilinear resize to `reference`'s size.
pub fn upsample_like(x: Tensor<4>, reference: &Tensor<4>) -> Tensor<4> {
    let [_, _, h, w] = reference.dims();
    resize_to(x, [h, w])
}

/// Bilinear resize with half-pixel centres (PyTorch's `align_corners=False`, ONNX
/// `half_pixel`).
pub fn resize_to(x: Tensor<4>, [h, w]: [usize; 2]) -> Tensor<4> {
    let [n, c, xh, xw] = x.dims();
    if (xh, xw) == (h, w) {
        return x;
    }
    if on_flex(&x) {
        let resized = resize_bilinear(flex_values(x).as_slice(), n * c, [xh, xw], [h, w]);
        return from_flex_values(resized, [n, c, h, w]);
    }
    let options = InterpolateOptions::new(InterpolateMode::Bilinear)
        .with_align_corners(false)
        .with_output_size([h, w]);
    interpolate(x, options)
}

/// Hands out the file's convolutions in order, checking each against what the architecture
/// expects at that point.
pub struct ConvSource<'a> {
    convs: std::vec::IntoIter<ConvWeights>,
    index: usize,
    device: &'a Device,
    on_flex: bool,
    /// The network being built, for error messages.
    architecture: &'static str,
}

impl<'a> ConvSource<'a> {
    pub fn new(convs: Vec<ConvWeights>, device: &'a Device, architecture: &'static str) -> Self {
        Self {
            convs: convs.into_iter(),
            index: 0,
            device,
            on_flex: crate::backend::on_flex(device),
            architecture,
        }
    }

    /// The next convolution, which must be stride 1.
    pub fn next(&mut self, in_channels: usize, kernel: usize, dilation: usize) -> Result<Conv> {
        self.next_strided(in_channels, kernel, dilation, 1)
    }

    pub fn next_strided(
        &mut self,
        in_channels: usize,
        kernel: usize,
        dilation: usize,
        stride: usize,
    ) -> Result<Conv> {
        let index = self.index;
        let architecture = self.architecture;
        self.index += 1;
        let c = self.convs.next().ok_or_else(|| {
            Error::InvalidModel(format!(
                "the file has only {index} convolutions, {architecture} needs more"
            ))
        })?;
        let [_, input, kh, kw] = c.shape;
        let expected_padding = dilation * (kernel - 1) / 2;
        if input != in_channels
            || (kh, kw) != (kernel, kernel)
            || c.dilation != dilation
            || c.stride != stride
            || c.padding != expected_padding
        {
            return Err(Error::InvalidModel(format!(
                "convolution #{index}: expected {in_channels} input channels, {kernel}x{kernel} \
                 kernel, dilation {dilation}, stride {stride}; the file has {input} channels, \
                 {kh}x{kw}, dilation {}, stride {} (not a {architecture} model?)",
                c.dilation, c.stride
            )));
        }
        Ok(Conv::new(c, self.device, self.on_flex))
    }

    pub fn finish(mut self) -> Result<()> {
        match self.convs.next() {
            None => Ok(()),
            Some(_) => Err(Error::InvalidModel(format!(
                "the file has more than the {} convolutions {} uses",
                self.index, self.architecture
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::max_abs_diff;
    use burn::tensor::Distribution;

    #[test]
    fn a_convolution_of_parts_is_that_of_their_concatenation() {
        let device = Device::flex();
        let random = |shape: [usize; 4]| {
            Tensor::<4>::random(shape, Distribution::Uniform(-1.0, 1.0), &device)
        };
        let (out, channels, kernel) = (4, [3, 5, 2], 3);
        let weights = ConvWeights {
            shape: [out, channels.iter().sum(), kernel, kernel],
            weight: random([out, channels.iter().sum(), kernel, kernel])
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
            bias: vec![0.5, -0.25, 1.0, 0.0],
            stride: 1,
            dilation: 2,
            padding: 2,
        };
        // burn's convolution on flex, as on wgpu (not cutout's CPU kernel).
        let conv = Conv::new(weights, &device, false);
        let ConvImpl::Burn { weight, bias } = &conv.weights else {
            panic!("asked for burn's convolution")
        };
        let parts: Vec<Tensor<4>> = channels.iter().map(|&c| random([2, c, 9, 11])).collect();
        let run = |max_bytes| {
            conv.forward_on_device(weight, bias, parts.clone(), true, max_bytes)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        let (concatenated, summed) = (run(usize::MAX), run(0));
        assert_eq!(concatenated.len(), 2 * out * 9 * 11);
        let error = max_abs_diff(&concatenated, &summed);
        assert!(error < 1e-5, "{error}");
    }
}
