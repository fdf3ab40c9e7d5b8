use super::{GpuImage, ImageOps, grid};
use crate::error::{Error, Result};

/// The canvas-sized layers of a result, back to front.
pub struct ComposeLayers<'a> {
    pub background: Option<&'a GpuImage>,
    pub shadow: Option<&'a GpuImage>,
    /// The outline band (alpha) and its straight RGBA colour.
    pub outline: Option<(&'a GpuImage, [f32; 4])>,
    pub subject: &'a GpuImage,
    pub subject_mask: &'a GpuImage,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ComposeStyle {
    /// Under everything; straight RGBA, alpha 0 for transparent.
    pub background_color: [f32; 4],
    /// 0: RGBA; 1: opaque RGB over `matte`; 2: the subject's alpha as grey.
    pub channels: u32,
    pub matte: [f32; 4],
    pub watermark: bool,
    /// Limit the subject's green to the mean of its red and blue (green-screen spill).
    pub despill: bool,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    size: [u32; 2],
    background_mode: u32,
    channels: u32,
    background_color: [f32; 4],
    outline_color: [f32; 4],
    matte: [f32; 4],
    shadow_on: u32,
    outline_on: u32,
    watermark: u32,
    despill: u32,
}

impl ImageOps {
    /// `shaders/compose.wgsl`: background, shadow, outline, subject and watermark in
    /// premultiplied alpha, written as straight RGBA8.
    pub fn compose(&self, layers: &ComposeLayers, style: ComposeStyle) -> Result<GpuImage> {
        let subject = layers.subject;
        let (w, h) = (subject.width, subject.height);
        let same = |image: &GpuImage| (image.width, image.height) == (w, h);
        let all_same = [
            layers.background,
            layers.shadow,
            layers.outline.map(|o| o.0),
        ]
        .into_iter()
        .flatten()
        .chain([layers.subject_mask])
        .all(same);
        if !all_same {
            return Err(Error::InvalidArgument(
                "compose layers differ in size".into(),
            ));
        }
        let params = self.uniform(&Params {
            size: [w, h],
            background_mode: layers.background.is_some() as u32,
            channels: style.channels,
            background_color: style.background_color,
            outline_color: layers.outline.map_or([0.0; 4], |o| o.1),
            matte: style.matte,
            shadow_on: layers.shadow.is_some() as u32,
            outline_on: layers.outline.is_some() as u32,
            watermark: style.watermark as u32,
            despill: style.despill as u32,
        });
        let output = self.empty_image(w, h)?;
        let mut encoder = self.encoder();
        self.dispatch(
            &mut encoder,
            &self.compose,
            &[
                &params,
                or_subject(layers.background, subject),
                or_subject(layers.shadow, subject),
                or_subject(layers.outline.map(|o| o.0), subject),
                &subject.buffer,
                &layers.subject_mask.buffer,
                &output.buffer,
            ],
            grid(w, h),
        );
        self.submit(encoder);
        Ok(output)
    }
}

/// Absent layers bind the subject's buffer in their place (the shader skips them).
fn or_subject<'a>(layer: Option<&'a GpuImage>, subject: &'a GpuImage) -> &'a wgpu::Buffer {
    layer.map_or(&subject.buffer, |l| &l.buffer)
}
