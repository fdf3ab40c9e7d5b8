//! Decoding uploads into sRGB RGBA8: JPEG, PNG, WebP; EXIF orientation applied; grey,
//! 16-bit, CMYK and alpha inputs converted; an embedded ICC profile (Display P3, Adobe RGB,
//! ProPhoto, …) converted into sRGB, as browsers and the hosted APIs do, so colours survive.
//! Sizes are checked from the header before any pixel is decoded, so a decompression bomb
//! costs nothing. Everything downstream (model, effects, encoders) works in sRGB.

use std::io::Cursor;

use image::{ImageDecoder, ImageFormat, ImageReader, RgbaImage};

use crate::error::{Error, Result};

/// Largest image accepted, in pixels (25 MP, the PhotoRoom limit).
pub const DEFAULT_MAX_PIXELS: u64 = 25_000_000;

#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

/// The image's width and height from its header, without decoding a pixel; `None` when
/// the header cannot be read (`decode` then says why).
pub fn dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
}

pub fn decode(bytes: &[u8], limits: DecodeLimits) -> Result<RgbaImage> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Decode(e.to_string()))?;
    match reader.format() {
        Some(ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP) => {}
        Some(other) => {
            return Err(Error::Decode(format!(
                "{other:?} is not supported (use JPEG, PNG or WebP)"
            )));
        }
        None if is_heif(bytes) => return Err(Error::UnsupportedFormat("HEIC/HEIF")),
        None => return Err(Error::Decode("not a JPEG, PNG or WebP image".into())),
    }
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| Error::Decode(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    let pixels = width as u64 * height as u64;
    if pixels > limits.max_pixels {
        return Err(Error::TooLarge(format!(
            "{width}x{height} is {pixels} pixels, the limit is {}",
            limits.max_pixels
        )));
    }
    let mut decoder_limits = image::Limits::default();
    // Room for the decoded pixels at 16 bits per channel plus the codec's own buffers.
    decoder_limits.max_alloc = Some(pixels * 8 * 2 + (64 << 20));
    decoder
        .set_limits(decoder_limits)
        .map_err(|e| Error::TooLarge(e.to_string()))?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let icc = decoder.icc_profile().ok().flatten();
    let mut image = image::DynamicImage::from_decoder(decoder).map_err(|e| match e {
        image::ImageError::Limits(l) => Error::TooLarge(l.to_string()),
        other => Error::Decode(other.to_string()),
    })?;
    image.apply_orientation(orientation);
    let mut image = image.into_rgba8();
    if let Some(icc) = icc {
        into_srgb(&mut image, &icc);
    }
    Ok(image)
}

/// Converts `image` from the RGB colour space its ICC profile describes into sRGB (alpha
/// untouched). A profile that cannot be read or used is ignored, as browsers ignore it:
/// the pixels are taken as sRGB.
fn into_srgb(image: &mut RgbaImage, icc: &[u8]) {
    use moxcms::{ColorProfile, DataColorSpace, Layout, TransformOptions};
    let profile = match ColorProfile::new_from_slice(icc) {
        Ok(profile) if profile.color_space == DataColorSpace::Rgb => profile,
        Ok(profile) => {
            log::debug!("ignoring an ICC profile of {:?} data", profile.color_space);
            return;
        }
        Err(e) => {
            log::warn!("ignoring an unreadable ICC profile: {e}");
            return;
        }
    };
    let srgb = ColorProfile::new_srgb();
    let transform = match profile.create_transform_8bit(
        Layout::Rgba,
        &srgb,
        Layout::Rgba,
        TransformOptions::default(),
    ) {
        Ok(transform) => transform,
        Err(e) => {
            log::warn!("ignoring an ICC profile that cannot be applied: {e}");
            return;
        }
    };
    let source = image.as_raw().clone();
    if let Err(e) = transform.transform(&source, image) {
        log::warn!("ignoring an ICC profile whose transform failed: {e}");
        image.copy_from_slice(&source);
    }
}

/// An ISO-BMFF `ftyp` box with a HEIF brand (iPhone photos are HEIC).
fn is_heif(bytes: &[u8]) -> bool {
    bytes.len() >= 12
        && &bytes[4..8] == b"ftyp"
        && matches!(
            &bytes[8..12],
            b"heic" | b"heix" | b"hevc" | b"hevx" | b"heim" | b"heis" | b"mif1" | b"msf1"
        )
}
