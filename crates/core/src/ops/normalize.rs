use super::{BufferRange, GpuImage, ImageOps, groups};
use crate::error::Result;

uniform! {
    struct Params {
        width: u32,
        height: u32,
        base: u32,
        _pad: u32,
        mean: [f32; 4],
        inv_std: [f32; 4],
    }
}

impl ImageOps {
    /// `shaders/normalize.wgsl`: the model's input planes (CHW f32) for one image, read back
    /// to the host (for a model on the CPU).
    pub fn normalize(&self, image: &GpuImage, mean: [f32; 3], std: [f32; 3]) -> Result<Vec<f32>> {
        self.normalize_batch(&[image], mean, std)
    }

    /// [`ImageOps::normalize`] for a batch (NCHW): every image's planes in one buffer, read
    /// back to the host at once.
    pub fn normalize_batch(
        &self,
        images: &[&GpuImage],
        mean: [f32; 3],
        std: [f32; 3],
    ) -> Result<Vec<f32>> {
        let sizes: Vec<u64> = images
            .iter()
            .map(|image| image.pixel_count() as u64 * 3 * 4)
            .collect();
        let total: u64 = sizes.iter().sum();
        self.check_bytes(total)?;
        let planes = self.storage(total, "planes");
        let mut offset = 0;
        for (image, &size) in images.iter().zip(&sizes) {
            let target = BufferRange {
                buffer: &planes,
                offset,
                size,
            };
            self.normalize_into(image, mean, std, target)?;
            offset += size;
        }
        let bytes = self.read_buffer(&planes, total)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// The model's input planes for one image, written into `target` on the device (3 ×
    /// pixels f32 values, e.g. one image's slot in the model's input tensor). Recorded with
    /// this thread's pending commands: [`ImageOps::flush`] before anything else (burn)
    /// reads `target`.
    pub fn normalize_into(
        &self,
        image: &GpuImage,
        mean: [f32; 3],
        std: [f32; 3],
        target: BufferRange,
    ) -> Result<()> {
        let count = image.pixel_count();
        let (binding, base) = target.binding(&self.gpu);
        let params = self.uniform(&Params {
            width: image.width,
            height: image.height,
            base,
            _pad: 0,
            mean: [mean[0], mean[1], mean[2], 0.0],
            inv_std: [1.0 / std[0], 1.0 / std[1], 1.0 / std[2], 0.0],
        });
        let max_value = self.storage(4, "max");
        let mut encoder = self.encoder();
        encoder.clear_buffer(&max_value, 0, None);
        self.dispatch(
            &mut encoder,
            &self.find_max,
            &[
                ("params", &params),
                ("src", &image.buffer),
                ("max_value", &max_value),
            ],
            [groups(count, 256), 1, 1],
        )?;
        self.dispatch_resources(
            &mut encoder,
            &self.normalize,
            vec![
                ("params", params.as_entire_binding()),
                ("src", image.buffer.as_entire_binding()),
                ("max_value", max_value.as_entire_binding()),
                ("dst", binding),
            ],
            [groups(count, 256), 1, 1],
        )?;
        self.submit(encoder);
        Ok(())
    }
}
