use super::{GpuImage, ImageOps, grid};
use crate::error::{Error, Result};

/// A mask's foreground box and pixel counts, from `shaders/bbox.wgsl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskStats {
    /// `[x0, y0, x1, y1)` of pixels at or above the foreground threshold.
    pub bbox: Option<[u32; 4]>,
    pub foreground: u32,
    /// Foreground pixels below the certainty threshold.
    pub uncertain: u32,
}

uniform! {
    struct Params {
        size: [u32; 2],
        foreground: f32,
        certain: f32,
        roi: [f32; 4],
        channel: u32,
        _pad: [u32; 3],
    }
}

/// Which channel of an RGBA8 image holds the mask to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskChannel {
    /// A model's mask (grey; red is read).
    Red,
    /// A photo's own transparency.
    Alpha,
}

impl MaskChannel {
    /// The channel's index in an RGBA pixel.
    pub fn index(self) -> usize {
        match self {
            Self::Red => 0,
            Self::Alpha => 3,
        }
    }
}

/// Mask values at or above this count as foreground (the subject box, cropped sides).
pub const FOREGROUND: f32 = 0.05;
/// Foreground values below this are uncertain.
pub const CERTAIN: f32 = 0.95;

impl ImageOps {
    /// Statistics of `mask`'s `channel` inside `roi` (`x0, y0, x1, y1` in pixels).
    pub fn mask_stats(
        &self,
        mask: &GpuImage,
        channel: MaskChannel,
        roi: [f32; 4],
    ) -> Result<MaskStats> {
        let stats = self.record_mask_stats(mask, channel, roi)?;
        Ok(MaskStats::from_bytes(
            &self.read_buffer(&stats, STATS_BYTES)?,
        ))
    }

    /// Records [`ImageOps::mask_stats`]'s dispatch; the statistics are in the returned
    /// buffer once it has run ([`MaskStats::from_bytes`] reads its `STATS_BYTES`).
    pub(super) fn record_mask_stats(
        &self,
        mask: &GpuImage,
        channel: MaskChannel,
        roi: [f32; 4],
    ) -> Result<wgpu::Buffer> {
        let params = self.uniform(&Params {
            size: [mask.width, mask.height],
            foreground: FOREGROUND,
            certain: CERTAIN,
            roi,
            channel: channel.index() as u32,
            _pad: [0; 3],
        });
        let initial: [u32; 6] = [u32::MAX, u32::MAX, 0, 0, 0, 0];
        let stats = self.storage_init(bytemuck::cast_slice(&initial), "mask stats");
        let mut encoder = self.encoder();
        self.dispatch(
            &mut encoder,
            &self.bbox,
            &[
                ("params", &params),
                ("mask", &mask.buffer),
                ("stats", &stats),
            ],
            grid(mask.width, mask.height),
        )?;
        self.submit(encoder);
        Ok(stats)
    }
}

/// The size of `shaders/bbox.wgsl`'s `Stats`: six `u32`s.
pub(super) const STATS_BYTES: u64 = 24;

impl MaskStats {
    /// `shaders/bbox.wgsl`'s `Stats` as read back.
    pub(super) fn from_bytes(bytes: &[u8]) -> Self {
        let mut v = [0u32; 6];
        for (value, word) in v.iter_mut().zip(bytes.chunks_exact(4)) {
            *value = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        }
        MaskStats {
            bbox: (v[4] > 0).then(|| [v[0], v[1], v[2], v[3]]),
            foreground: v[4],
            uncertain: v[5],
        }
    }
}

impl ImageOps {
    /// A dispatch with a known answer, for health checks: the statistics of one opaque
    /// pixel, read back. `Ok` when the device ran it and answered right.
    pub fn probe(&self) -> Result<()> {
        if let Some(why) = self.gpu.lost() {
            return Err(Error::DeviceLost(why.to_string()));
        }
        let stats = self.capturing(|| {
            let pixel = image::RgbaImage::from_pixel(1, 1, image::Rgba([0, 0, 0, 255]));
            let pixel = self.upload(&pixel)?;
            self.mask_stats(&pixel, MaskChannel::Alpha, [0.0, 0.0, 1.0, 1.0])
        })?;
        let expected = MaskStats {
            bbox: Some([0, 0, 1, 1]),
            foreground: 1,
            uncertain: 0,
        };
        if stats == expected {
            Ok(())
        } else {
            Err(Error::Device(format!(
                "a probe answered {stats:?}, expected {expected:?}"
            )))
        }
    }
}
