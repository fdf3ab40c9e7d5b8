use super::{GpuImage, ImageOps, groups};
use crate::error::Result;

/// Resampling kernel; both are antialiased (widened when shrinking).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Bilinear = 0,
    Lanczos3 = 1,
}

uniform! {
    struct Params {
        src_width: u32,
        src_height: u32,
        dst_width: u32,
        dst_height: u32,
        axis: u32,
        kernel_type: u32,
        _pad: [u32; 2],
    }
}

impl ImageOps {
    /// `shaders/resize.wgsl`: horizontal pass then vertical pass (each skipped when that
    /// axis keeps its size), as Pillow does.
    pub fn resize(
        &self,
        src: &GpuImage,
        width: u32,
        height: u32,
        filter: Filter,
    ) -> Result<GpuImage> {
        let mut encoder = self.encoder();
        let mut current: Option<GpuImage> = None;
        for (axis, target) in [(0, (width, src.height)), (1, (width, height))] {
            let input = current.as_ref().unwrap_or(src);
            if (input.width, input.height) == target {
                continue;
            }
            let output = self.empty_image(target.0, target.1)?;
            let params = self.uniform(&Params {
                src_width: input.width,
                src_height: input.height,
                dst_width: target.0,
                dst_height: target.1,
                axis,
                kernel_type: filter as u32,
                _pad: [0; 2],
            });
            self.dispatch(
                &mut encoder,
                &self.resize,
                &[
                    ("params", &params),
                    ("src", &input.buffer),
                    ("dst", &output.buffer),
                ],
                [groups(target.0, 8), groups(target.1, 8), 1],
            )?;
            current = Some(output);
        }
        // Kept pending either way: `encoder` holds what this thread recorded before.
        self.submit(encoder);
        match current {
            Some(resized) => Ok(resized),
            None => self.copy(src),
        }
    }

    fn copy(&self, src: &GpuImage) -> Result<GpuImage> {
        let output = self.empty_image(src.width, src.height)?;
        let mut encoder = self.encoder();
        encoder.copy_buffer_to_buffer(
            &src.buffer,
            0,
            &output.buffer,
            0,
            src.pixel_count() as u64 * 4,
        );
        self.submit(encoder);
        Ok(output)
    }
}
