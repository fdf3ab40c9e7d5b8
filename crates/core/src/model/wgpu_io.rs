//! On burn's wgpu backend the model's input and output never leave the device: cutout's
//! shaders write the normalised planes straight into the input tensor's buffer and read the
//! prediction out of the output tensor's buffer. burn runs on the same wgpu device and queue
//! (`gpu.rs`), so submission order is all the synchronisation needed.

use burn::backend::Wgpu;
use burn::backend::wgpu::{CubeTensor, WgpuResource};
use burn::tensor::Tensor;
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
