//! IS-Net (Qin et al. 2022, "Highly Accurate Dichotomous Image Segmentation"), the network
//! of rembg's isnet-general-use.
//!
//! A stride-2 3×3 convolution (no activation) halves the 1024×1024 input; the same nested U
//! of residual U-blocks as U²-Net (`rsu::NestedU`) runs at that resolution; a 3×3 side
//! convolution on the last decoder stage, upsampled to the input size, gives the mask through
//! a sigmoid. The export carries five more side convolutions (deeper supervision during
//! training, not part of the first output): they are checked and dropped.

use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};

use super::Network;
use super::onnx::ConvWeights;
use super::rsu::{Conv, ConvSource, NestedU, resize_to};
use crate::error::Result;

#[derive(Debug)]
pub struct IsNet {
    stem: Conv,
    body: NestedU,
    side: Conv,
}

impl IsNet {
    /// Builds the network from convolution weights listed in execution order (as an ONNX
    /// export lists them), checking each against the architecture.
    pub fn from_convolutions(convs: Vec<ConvWeights>, device: &Device) -> Result<Self> {
        let mut source = ConvSource::new(convs, device, "IS-Net");
        let stem = source.next_strided(3, 3, 1, 2)?;
        let body = NestedU::load(&mut source, stem.out_channels())?;
        let mut sides = body
            .side_channels()
            .into_iter()
            .map(|channels| source.next(channels, 3, 1))
            .collect::<Result<Vec<_>>>()?;
        source.finish()?;
        Ok(Self {
            stem,
            body,
            side: sides.swap_remove(0),
        })
    }
}

impl Network for IsNet {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let half = self.stem.forward(vec![x], false);
        let decoded = self.body.forward(half);
        let last = decoded
            .stages
            .into_iter()
            .last()
            .expect("five decoder stages");
        sigmoid(resize_to(self.side.forward(vec![last], false), [h, w]))
    }
}
