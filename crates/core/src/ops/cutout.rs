use super::{GpuImage, ImageOps, linear_groups};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CutoutMode {
    /// The image with the mask as alpha, over `background` (straight RGBA, 0..1) when given.
    Cutout { background: Option<[f32; 4]> },
    /// The mask alone, as an opaque grey image.
    MaskOnly,
    /// The image's own alpha channel as a mask (the `mask` argument is ignored).
    AlphaAsMask,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    pixel_count: u32,
    mode: u32,
    _pad: [u32; 2],
    background: [f32; 4],
}

impl ImageOps {
    /// `shaders/cutout.wgsl`: applies a same-size mask to an image.
    pub fn cutout(&self, image: &GpuImage, mask: &GpuImage, mode: CutoutMode) -> Result<GpuImage> {
        if (image.width, image.height) != (mask.width, mask.height) {
            return Err(Error::InvalidArgument("mask and image sizes differ".into()));
        }
        let (mode, background) = match mode {
            CutoutMode::Cutout { background } => (0, background.unwrap_or([0.0; 4])),
            CutoutMode::MaskOnly => (1, [0.0; 4]),
            CutoutMode::AlphaAsMask => (2, [0.0; 4]),
        };
        let params = self.uniform(&Params {
            pixel_count: image.pixel_count(),
            mode,
            _pad: [0; 2],
            background,
        });
        let output = self.empty_image(image.width, image.height)?;
        let mut encoder = self.encoder();
        self.dispatch(
            &mut encoder,
            &self.cutout,
            &[&params, &image.buffer, &mask.buffer, &output.buffer],
            linear_groups(image.pixel_count()),
        );
        self.submit(encoder);
        Ok(output)
    }
}
