use super::{GpuImage, ImageOps, groups};
use crate::error::Result;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    width: u32,
    height: u32,
    _pad: [u32; 2],
    mean: [f32; 4],
    inv_std: [f32; 4],
}

impl ImageOps {
    /// `shaders/normalize.wgsl`: the model's input planes (CHW f32) for one image, read back
    /// to the host for the model.
    pub fn normalize(&self, image: &GpuImage, mean: [f32; 3], std: [f32; 3]) -> Result<Vec<f32>> {
        let count = image.pixel_count();
        let params = self.uniform(&Params {
            width: image.width,
            height: image.height,
            _pad: [0; 2],
            mean: [mean[0], mean[1], mean[2], 0.0],
            inv_std: [1.0 / std[0], 1.0 / std[1], 1.0 / std[2], 0.0],
        });
        let max_value = self.storage(4, "max");
        let planes = self.storage(count as u64 * 3 * 4, "planes");
        let mut encoder = self.encoder();
        encoder.clear_buffer(&max_value, 0, None);
        let buffers = [&params, &image.buffer, &max_value, &planes];
        self.dispatch(
            &mut encoder,
            &self.find_max,
            &buffers[..3],
            [groups(count, 256), 1, 1],
        );
        self.dispatch(
            &mut encoder,
            &self.normalize,
            &buffers,
            [groups(count, 256), 1, 1],
        );
        self.submit(encoder);
        let bytes = self.read_buffer(&planes, count as u64 * 3 * 4)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}
