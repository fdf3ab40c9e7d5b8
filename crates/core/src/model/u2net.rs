//! U²-Net (Qin et al. 2020) and its variants u2netp, u2net_human_seg and silueta.
//!
//! The nested U of residual U-blocks (`rsu::NestedU`) runs at the input's resolution; a 3×3
//! side convolution reads each decoder stage and the deepest encoder stage, the six side maps
//! are upsampled to the input size, and a 1×1 convolution fuses them. The first output,
//! `sigmoid(fused)`, is the mask. Variants differ only in channel widths, which are taken
//! from the weights, so one network type serves them all.

use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};

use super::Network;
use super::onnx::ConvWeights;
use super::rsu::{Conv, ConvSource, NestedU, upsample_like};
use crate::error::Result;

#[derive(Debug)]
pub struct U2Net {
    body: NestedU,
    sides: Vec<Conv>,
    fuse: Conv,
}

impl U2Net {
    /// Builds the network from convolution weights listed in execution order (as an ONNX
    /// export lists them), checking each against the architecture.
    pub fn from_convolutions(convs: Vec<ConvWeights>, device: &Device) -> Result<Self> {
        let mut source = ConvSource::new(convs, device, "U²-Net");
        let body = NestedU::load(&mut source, 3)?;
        let sides = body
            .side_channels()
            .into_iter()
            .map(|channels| source.next(channels, 3, 1))
            .collect::<Result<Vec<_>>>()?;
        let fuse = source.next(6 * sides[0].out_channels(), 1, 1)?;
        source.finish()?;
        Ok(Self { body, sides, fuse })
    }
}

impl Network for U2Net {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let decoded = self.body.forward(x);
        let full = decoded.stages.last().expect("five decoder stages").clone();
        let side_inputs = decoded.stages.into_iter().rev().chain([decoded.deepest]);
        let side_maps = self
            .sides
            .iter()
            .zip(side_inputs)
            .map(|(side, input)| upsample_like(side.forward(vec![input], false), &full))
            .collect();
        sigmoid(self.fuse.forward(side_maps, false))
    }
}
