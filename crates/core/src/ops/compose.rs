use super::{GpuImage, ImageOps, Limiter, grid};
use crate::error::{Error, Result};

/// The canvas-sized layers of a result, back to front: device images, host images
/// (`cpu::compose`) or pipeline images (`ImageOps::compose_image`).
pub struct ComposeLayers<'a, I = GpuImage> {
    pub background: Option<&'a I>,
    pub shadow: Option<&'a I>,
    /// The outline band (alpha) and its straight RGBA colour.
    pub outline: Option<(&'a I, [f32; 4])>,
    pub subject: &'a I,
    pub subject_mask: &'a I,
}

impl<'a, I> ComposeLayers<'a, I> {
    /// The same layers, each one converted by `convert`.
    pub fn try_map<J>(
        &self,
        convert: impl Fn(&'a I) -> Result<&'a J>,
    ) -> Result<ComposeLayers<'a, J>> {
        Ok(ComposeLayers {
            background: self.background.map(&convert).transpose()?,
            shadow: self.shadow.map(&convert).transpose()?,
            outline: match self.outline {
                Some((band, colour)) => Some((convert(band)?, colour)),
                None => None,
            },
            subject: convert(self.subject)?,
            subject_mask: convert(self.subject_mask)?,
        })
    }

    /// Every layer present, subject first.
    fn all(&self) -> impl Iterator<Item = &'a I> {
        [
            Some(self.subject),
            Some(self.subject_mask),
            self.background,
            self.shadow,
            self.outline.map(|o| o.0),
        ]
        .into_iter()
        .flatten()
    }

    /// Refuses layers of different sizes (`size` gives one layer's).
    pub(super) fn check_sizes(&self, size: impl Fn(&I) -> (u32, u32)) -> Result<(u32, u32)> {
        let first = size(self.subject);
        if self.all().any(|layer| size(layer) != first) {
            return Err(Error::InvalidArgument(
                "compose layers differ in size".into(),
            ));
        }
        Ok(first)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ComposeStyle {
    /// Under everything; straight RGBA, alpha 0 for transparent.
    pub background_color: [f32; 4],
    /// 0: RGBA; 1: opaque RGB over `matte`; 2: the subject's alpha as grey.
    pub channels: u32,
    pub matte: [f32; 4],
    pub watermark: bool,
    /// A known background colour (straight RGB) whose reflections to remove from the
    /// subject; one measured on the device is given as a [`Limiter`] instead
    /// ([`ImageOps::compose_despilled`]).
    pub despill: Option<[f32; 3]>,
}

/// A spill limiter for `key`: the subject loses `max(0, rgb·weights) × direction`. For pure
/// green that is the classic limiter, green down to the mean of red and blue; for any other
/// colour the same rule in its direction (blue: blue down to the mean of red and green).
pub(super) fn spill_limiter(key: [f32; 3]) -> ([f32; 4], [f32; 4]) {
    let mean = key.iter().sum::<f32>() / 3.0;
    let max = key.iter().copied().fold(f32::MIN, f32::max);
    let min = key.iter().copied().fold(f32::MAX, f32::min);
    if max - min < 1e-3 {
        return ([0.0; 4], [0.0; 4]);
    }
    let weights = key.map(|c| (c - mean) / (max - mean));
    let direction = key.map(|c| (c - min) / (max - min));
    (
        [weights[0], weights[1], weights[2], 0.0],
        [direction[0], direction[1], direction[2], 0.0],
    )
}

uniform! {
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
        _pad: u32,
    }
}

impl ImageOps {
    /// `shaders/compose.wgsl`: background, shadow, outline, subject and watermark in
    /// premultiplied alpha, written as straight RGBA8.
    pub fn compose(&self, layers: &ComposeLayers, style: ComposeStyle) -> Result<GpuImage> {
        self.compose_despilled(layers, style, &self.known_spill(style.despill))
    }

    /// [`ImageOps::compose`] with spill removal by `spill` (e.g. measured on the device by
    /// [`ImageOps::measure_spill`]) in place of `style.despill`.
    pub fn compose_despilled(
        &self,
        layers: &ComposeLayers,
        style: ComposeStyle,
        spill: &Limiter,
    ) -> Result<GpuImage> {
        let subject = layers.subject;
        let (w, h) = layers.check_sizes(|image| (image.width, image.height))?;
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
            _pad: 0,
        });
        let output = self.empty_image(w, h)?;
        let mut encoder = self.encoder();
        self.dispatch(
            &mut encoder,
            &self.compose,
            &[
                ("params", &params),
                ("background", or_subject(layers.background, subject)),
                ("shadow", or_subject(layers.shadow, subject)),
                ("outline", or_subject(layers.outline.map(|o| o.0), subject)),
                ("subject", &subject.buffer),
                ("subject_mask", &layers.subject_mask.buffer),
                ("dst", &output.buffer),
                ("spill", &spill.buffer),
            ],
            grid(w, h),
        )?;
        self.submit(encoder);
        Ok(output)
    }
}

/// Absent layers bind the subject's buffer in their place (the shader skips them).
fn or_subject<'a>(layer: Option<&'a GpuImage>, subject: &'a GpuImage) -> &'a wgpu::Buffer {
    layer.map_or(&subject.buffer, |l| &l.buffer)
}
