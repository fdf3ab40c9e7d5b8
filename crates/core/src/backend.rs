//! The one place cutout reaches below burn's backend-neutral `Tensor`, so the model files
//! never name a backend:
//! - **flex** (CPU): cutout's own kernels (`model::cpu_conv`, `model::cpu_resample`) read and
//!   write flex's host storage directly ([`on_flex`], [`flex_values`], [`from_flex_values`]).
//! - **burn-wgpu**: the model's input and output never leave the device: cutout's shaders
//!   write the normalised planes straight into the input tensor's buffer and read the
//!   prediction out of the output tensor's buffer ([`TensorBuffer`]). burn runs on the same
//!   wgpu device and queue (`gpu.rs`), so submission order is all the synchronisation needed.

use burn::backend::Wgpu;
use burn::backend::wgpu::{CubeTensor, WgpuResource};
use burn::tensor::{Device, Tensor, TensorData};
use burn_flex::{Flex, FlexTensor};
use cubecl::wgpu::{AutoCompiler, WgpuServer};
use cubecl_runtime::storage::ManagedResource;

use crate::ops::BufferRange;

/// A contiguous f32 tensor on burn's wgpu backend, with its storage held in place.
pub struct TensorBuffer {
    tensor: CubeTensor,
    resource: ManagedResource<WgpuResource>,
}

impl TensorBuffer {
    /// The tensor's storage, once burn's pending work on it is submitted; `None` when the
    /// tensor is not a contiguous f32 tensor on burn's wgpu backend.
    pub fn of(tensor: Tensor<4>) -> Option<Self> {
        let tensor = tensor.try_into_primitive::<Wgpu>().ok()?;
        if !tensor.is_contiguous() || tensor.dtype != burn::tensor::DType::F32 {
            return None;
        }
        tensor.client.flush().ok()?;
        let resource = tensor
            .client
            .get_resource::<WgpuServer<AutoCompiler>>(tensor.handle.clone())
            .ok()?;
        Some(Self { tensor, resource })
    }

    /// `len` floats from element `start` on.
    pub fn range(&self, start: u64, len: u64) -> BufferRange<'_> {
        let resource = self.resource.resource();
        assert!(
            (start + len) * 4 <= resource.size,
            "range inside the tensor"
        );
        BufferRange {
            buffer: &resource.buffer,
            offset: resource.offset + start * 4,
            size: len * 4,
        }
    }

    /// Back to a tensor, for the model (after the shaders that fill it are submitted).
    pub fn into_tensor(self) -> Tensor<4> {
        Tensor::from_primitive::<Wgpu>(self.tensor)
    }
}

/// Whether `device` is burn's flex backend (the one probe: flex has a single device).
pub fn on_flex(device: &Device) -> bool {
    *device == Device::flex()
}

/// Whether the model's tensors on `device` live in wgpu buffers cutout's shaders can fill and
/// read in place.
pub fn shares_buffers(device: &Device) -> bool {
    TensorBuffer::of(Tensor::<4>::zeros([1, 1, 1, 1], device)).is_some()
}

/// A flex tensor's values, contiguous, in row-major order.
///
/// Panics when `x` is not on flex: callers check [`on_flex`] on the tensor's device first.
pub fn flex_values(x: Tensor<4>) -> FlexValues {
    let tensor = x
        .try_into_primitive::<Flex>()
        .expect("callers check on_flex first");
    FlexValues(if tensor.as_slice::<f32>().is_some() {
        tensor
    } else {
        tensor.to_contiguous()
    })
}

/// A contiguous f32 flex tensor's storage, borrowed as a slice by [`FlexValues::as_slice`].
pub struct FlexValues(FlexTensor);

impl FlexValues {
    pub fn as_slice(&self) -> &[f32] {
        self.0
            .as_slice::<f32>()
            .expect("made contiguous f32 by flex_values")
    }

    /// The tensor's size along dimension `dim`.
    pub fn dim(&self, dim: usize) -> usize {
        self.0.layout().shape()[dim]
    }
}

/// A flex tensor of `shape` holding `values`.
pub fn from_flex_values(values: Vec<f32>, shape: [usize; 4]) -> Tensor<4> {
    Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(values, shape)))
}
