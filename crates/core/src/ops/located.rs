//! An image of a job as the pipeline passes it between operations: in host memory, on the
//! device, or both. Each operation with a CPU version (`ops::cpu`) runs where
//! [`ImageOps::on_host`] says, chosen once per process; the others run on the device. An
//! image crosses to the other side only when an operation needs it there, at most once.

use std::cell::OnceCell;

use image::RgbaImage;

use super::{
    ComposeLayers, ComposeStyle, Filter, GpuImage, ImageOps, MaskChannel, MaskStats, PlaceMap,
    Refinement, cpu,
};
use crate::error::Result;

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

    /// [`ImageOps::mask_stats`] or [`cpu::mask_stats`].
    pub fn stats(&self, mask: &Image, channel: MaskChannel, roi: [f32; 4]) -> Result<MaskStats> {
        if self.on_host() {
            return Ok(cpu::mask_stats(self.host(mask)?, channel, roi));
        }
        self.mask_stats(self.device(mask)?, channel, roi)
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

    /// [`ImageOps::compose`] or [`cpu::compose`], bringing each layer to where it runs.
    pub fn compose_image(
        &self,
        layers: &ComposeLayers<Image>,
        style: ComposeStyle,
    ) -> Result<Image> {
        if self.on_host() {
            let layers = layers.try_map(|layer| self.host(layer))?;
            return self.image(cpu::compose(&layers, style)?);
        }
        let layers = layers.try_map(|layer| self.device(layer))?;
        Ok(self.compose(&layers, style)?.into())
    }
}
