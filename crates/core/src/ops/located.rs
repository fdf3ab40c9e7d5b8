//! An image of a job as the pipeline passes it between operations: in host memory, on the
//! device, or both. Each operation with a CPU version (`ops::cpu`) runs where
//! [`ImageOps::on_host`] says, chosen once per process; the others run on the device. An
//! image crosses to the other side only when an operation needs it there, at most once.

use std::cell::OnceCell;
use std::time::Duration;

use image::RgbaImage;

use super::{
    ComposeLayers, ComposeStyle, Filter, GpuImage, ImageOps, Limiter, MaskChannel, MaskStats,
    PlaceMap, Recording, Refinement, bbox::STATS_BYTES, cpu,
};
use crate::error::{Error, Result};

/// A mask's statistics ([`ImageOps::measure`]): computed on the host, or recorded on the
/// device and read with the rest of a batch ([`ImageOps::read_stats`]).
pub enum Measured {
    Host(MaskStats),
    Device(wgpu::Buffer),
}

/// The background colour to remove from the subject's edges ([`ImageOps::spill_key`]).
pub enum SpillKey {
    /// Known on the host: measured there, or the fallback.
    Colour([f32; 3]),
    /// Measured and consumed on the device.
    Measured(Limiter),
}

impl SpillKey {
    /// PhotoRoom documents despill for green backgrounds: the key where none is measured.
    pub const GREEN: [f32; 3] = [0.0, 1.0, 0.0];
}

pub struct Image {
    width: u32,
    height: u32,
    host: OnceCell<RgbaImage>,
    device: OnceCell<GpuImage>,
}

impl Image {
    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }
}

impl From<GpuImage> for Image {
    fn from(image: GpuImage) -> Self {
        Self {
            width: image.width,
            height: image.height,
            host: OnceCell::new(),
            device: OnceCell::from(image),
        }
    }
}

impl ImageOps {
    /// `image` as a pipeline image, refused like [`ImageOps::upload`] when the device could
    /// not hold it (so where the operations run never changes what is accepted).
    pub fn image(&self, image: RgbaImage) -> Result<Image> {
        let (width, height) = image.dimensions();
        self.check_size(width, height)?;
        Ok(Image {
            width,
            height,
            host: OnceCell::from(image),
            device: OnceCell::new(),
        })
    }

    /// The image in host memory, read back from the device the first time it is asked for.
    pub fn host<'a>(&self, image: &'a Image) -> Result<&'a RgbaImage> {
        if let Some(host) = image.host.get() {
            return Ok(host);
        }
        let device = image
            .device
            .get()
            .expect("an image is on one side at least");
        let pixels = self.download(device)?;
        Ok(image.host.get_or_init(|| pixels))
    }

    /// The image on the device, uploaded the first time it is asked for.
    pub fn device<'a>(&self, image: &'a Image) -> Result<&'a GpuImage> {
        if let Some(device) = image.device.get() {
            return Ok(device);
        }
        let host = image.host.get().expect("an image is on one side at least");
        let uploaded = self.upload(host)?;
        Ok(image.device.get_or_init(|| uploaded))
    }

    /// The image's pixels, taken from host memory without a copy when they are there.
    pub fn into_host(&self, image: Image) -> Result<RgbaImage> {
        let Image { host, device, .. } = image;
        match host.into_inner() {
            Some(pixels) => Ok(pixels),
            None => self.download(&device.into_inner().expect("on one side at least")),
        }
    }

    /// [`ImageOps::resize`] or [`cpu::resize`].
    pub fn resize_image(
        &self,
        image: &Image,
        width: u32,
        height: u32,
        filter: Filter,
    ) -> Result<Image> {
        if self.on_host() {
            let resized = cpu::resize(self.host(image)?, width, height, filter);
            return self.image(resized);
        }
        Ok(self
            .resize(self.device(image)?, width, height, filter)?
            .into())
    }

    /// [`ImageOps::refine_mask`] or [`cpu::refine_mask`]: `mask` at `photo`'s size.
    pub fn refine_image(
        &self,
        photo: &Image,
        mask: &Image,
        refinement: Refinement,
    ) -> Result<Image> {
        if self.on_host() {
            let refined = cpu::refine_mask(self.host(photo)?, self.host(mask)?, refinement);
            return self.image(refined);
        }
        let refined = self.refine_mask(self.device(photo)?, self.device(mask)?, refinement)?;
        Ok(refined.into())
    }

    /// [`ImageOps::mask_stats`] or [`cpu::mask_stats`], read at once.
    pub fn stats(&self, mask: &Image, channel: MaskChannel, roi: [f32; 4]) -> Result<MaskStats> {
        let measured = self.measure(mask, channel, roi)?;
        Ok(self.read_stats(Recording::default(), &[&measured])?.0[0])
    }

    /// [`ImageOps::stats`], recorded on the device to be read with the rest of a batch by
    /// [`ImageOps::read_stats`]; computed at once on the host.
    pub fn measure(&self, mask: &Image, channel: MaskChannel, roi: [f32; 4]) -> Result<Measured> {
        if self.on_host() {
            return Ok(Measured::Host(cpu::mask_stats(
                self.host(mask)?,
                channel,
                roi,
            )));
        }
        let buffer = self.record_mask_stats(self.device(mask)?, channel, roi)?;
        Ok(Measured::Device(buffer))
    }

    /// Submits `recording` and reads every statistic in `measured` in one submission and
    /// one readback; with the time the device took to run it.
    pub fn read_stats(
        &self,
        recording: Recording,
        measured: &[&Measured],
    ) -> Result<(Vec<MaskStats>, Duration)> {
        let parts: Vec<(&wgpu::Buffer, u64)> = measured
            .iter()
            .filter_map(|m| match m {
                Measured::Device(buffer) => Some((buffer, STATS_BYTES)),
                Measured::Host(_) => None,
            })
            .collect();
        let read = self.read_recorded(recording, &parts)?;
        let mut bytes = read.parts.into_iter();
        let stats = measured
            .iter()
            .map(|m| match m {
                Measured::Host(stats) => *stats,
                Measured::Device(_) => MaskStats::from_bytes(&bytes.next().unwrap_or_default()),
            })
            .collect();
        Ok((stats, read.device_time))
    }

    /// Submits `recording` and takes every image to the host, those on the device in one
    /// submission and one readback; with the time the device took to run it.
    pub fn read_images(
        &self,
        recording: Recording,
        images: Vec<Image>,
    ) -> Result<(Vec<RgbaImage>, Duration)> {
        let mut on_device = Vec::new();
        let mut on_host = Vec::new();
        for image in images {
            let Image {
                host,
                device,
                width,
                height,
            } = image;
            match (host.into_inner(), device.into_inner()) {
                (Some(pixels), _) => on_host.push(Some(pixels)),
                (None, Some(device)) => {
                    on_host.push(None);
                    on_device.push(device);
                }
                (None, None) => {
                    return Err(Error::Device(format!(
                        "a {width}x{height} image on neither side"
                    )));
                }
            }
        }
        let parts: Vec<(&wgpu::Buffer, u64)> = on_device
            .iter()
            .map(|image| (&image.buffer, image.pixel_count() as u64 * 4))
            .collect();
        let read = self.read_recorded(recording, &parts)?;
        let mut read_pixels = on_device.iter().zip(read.parts);
        let images = on_host
            .into_iter()
            .map(|pixels| match pixels {
                Some(pixels) => Ok(pixels),
                None => {
                    let (image, bytes) = read_pixels
                        .next()
                        .ok_or_else(|| Error::Device("fewer images read back than sent".into()))?;
                    RgbaImage::from_raw(image.width, image.height, bytes)
                        .ok_or_else(|| Error::Device("read back a buffer of the wrong size".into()))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((images, read.device_time))
    }

    /// [`ImageOps::place`] or [`cpu::place`].
    pub fn place_image(
        &self,
        image: &Image,
        mask: Option<&Image>,
        map: PlaceMap,
    ) -> Result<(Image, Image)> {
        if self.on_host() {
            let mask = mask.map(|m| self.host(m)).transpose()?;
            let (colour, canvas_mask) = cpu::place(self.host(image)?, mask, map);
            return Ok((self.image(colour)?, self.image(canvas_mask)?));
        }
        let mask = mask.map(|m| self.device(m)).transpose()?;
        let (colour, canvas_mask) = self.place(self.device(image)?, mask, map)?;
        Ok((colour.into(), canvas_mask.into()))
    }

    /// The colour of `photo`'s background where the model's `mask` says background
    /// ([`ImageOps::measure_spill`] or [`cpu::spill_colour`]), green when it is not coloured.
    pub fn spill_key(&self, photo: &Image, mask: &Image) -> Result<SpillKey> {
        if self.on_host() {
            let colour = cpu::spill_colour(self.host(photo)?, self.host(mask)?);
            return Ok(SpillKey::Colour(colour.unwrap_or(SpillKey::GREEN)));
        }
        let limiter = self.measure_spill(self.device(photo)?, self.device(mask)?)?;
        Ok(SpillKey::Measured(limiter))
    }

    /// [`ImageOps::compose`] or [`cpu::compose`], bringing each layer to where it runs; a
    /// `spill` key takes the place of `style.despill`.
    pub fn compose_image(
        &self,
        layers: &ComposeLayers<Image>,
        style: ComposeStyle,
        spill: Option<&SpillKey>,
    ) -> Result<Image> {
        let (style, measured) = match spill {
            None => (style, None),
            Some(SpillKey::Colour(colour)) => (
                ComposeStyle {
                    despill: Some(*colour),
                    ..style
                },
                None,
            ),
            Some(SpillKey::Measured(limiter)) => (style, Some(limiter)),
        };
        if self.on_host() && measured.is_none() {
            let layers = layers.try_map(|layer| self.host(layer))?;
            return self.image(cpu::compose(&layers, style)?);
        }
        let layers = layers.try_map(|layer| self.device(layer))?;
        let composed = match measured {
            Some(limiter) => self.compose_despilled(&layers, style, limiter)?,
            None => self.compose(&layers, style)?,
        };
        Ok(composed.into())
    }
}
