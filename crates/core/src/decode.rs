//! Decoding uploads into sRGB RGBA8: JPEG, PNG, WebP; EXIF orientation applied; grey,
//! 16-bit, CMYK and alpha inputs converted; an embedded ICC profile (Display P3, Adobe RGB,
//! ProPhoto, a CMYK press profile, …) converted into sRGB, as browsers and the hosted APIs do,
//! so colours survive.
//! Sizes are checked from the header before any pixel is decoded, so a decompression bomb
//! costs nothing. Everything downstream (model, effects, encoders) works in sRGB.

use std::io::Cursor;

use image::{ImageDecoder, ImageFormat, ImageReader, RgbaImage};
use moxcms::{ColorProfile, DataColorSpace, Layout, TransformOptions};

use crate::error::{Error, Result};

/// Largest image accepted, in pixels (25 MP, the PhotoRoom limit).
pub const DEFAULT_MAX_PIXELS: u64 = 25_000_000;

/// Longest side accepted: JPEG's own limit, and what the device addresses in one dispatch.
pub const MAX_SIDE: u32 = 65_535;

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
    let format = match reader.format() {
        Some(format @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP)) => format,
        Some(other) => {
            return Err(Error::Decode(format!(
                "{other:?} is not supported (use JPEG, PNG or WebP)"
            )));
        }
        None if is_heif(bytes) => return Err(Error::UnsupportedFormat("HEIC/HEIF")),
        None => return Err(Error::Decode("not a JPEG, PNG or WebP image".into())),
    };
    if format == ImageFormat::Jpeg && !jpeg_has_end(bytes) {
        return Err(Error::Decode(
            "the JPEG is truncated: its image data has no end-of-image marker".into(),
        ));
    }
    if format == ImageFormat::WebP && !riff_is_complete(bytes) {
        return Err(Error::Decode(
            "the WebP is truncated: it is shorter than its RIFF header says".into(),
        ));
    }
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| Error::Decode(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    let pixels = width as u64 * height as u64;
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(Error::TooLarge(format!(
            "{width}x{height} is wider or taller than {MAX_SIDE} pixels"
        )));
    }
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
    if format == ImageFormat::WebP {
        webp_frames_within(bytes, width, height)?;
    }
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let profile = decoder
        .icc_profile()
        .ok()
        .flatten()
        .and_then(|icc| read_profile(&icc));
    let inks = match &profile {
        Some(profile)
            if format == ImageFormat::Jpeg && profile.color_space == DataColorSpace::Cmyk =>
        {
            jpeg_inks(bytes)?
        }
        _ => None,
    };
    let image = match (inks, &profile) {
        (Some(inks), Some(profile)) => {
            drop(decoder);
            cmyk_into_srgb(&inks, width, height, profile)?
        }
        _ => {
            let image = image::DynamicImage::from_decoder(decoder).map_err(|e| match e {
                image::ImageError::Limits(l) => Error::TooLarge(l.to_string()),
                other => Error::Decode(other.to_string()),
            })?;
            let mut image = image.into_rgba8();
            if let Some(profile) = profile.filter(|p| p.color_space == DataColorSpace::Rgb) {
                rgb_into_srgb(&mut image, &profile);
            }
            image
        }
    };
    let mut image = image::DynamicImage::ImageRgba8(image);
    image.apply_orientation(orientation);
    Ok(image.into_rgba8())
}

/// The embedded ICC profile, or `None` for one that cannot be read: browsers ignore such a
/// profile and take the pixels as sRGB, and so does cutout.
fn read_profile(icc: &[u8]) -> Option<ColorProfile> {
    ColorProfile::new_from_slice(icc)
        .inspect_err(|e| log::warn!("ignoring an unreadable ICC profile: {e}"))
        .ok()
}

/// Converts `image` from the RGB colour space its ICC profile describes into sRGB (alpha
/// untouched). A profile that cannot be used is ignored, as browsers ignore it.
fn rgb_into_srgb(image: &mut RgbaImage, profile: &ColorProfile) {
    let transform = match profile.create_transform_8bit(
        Layout::Rgba,
        &ColorProfile::new_srgb(),
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

/// The ink amounts of a four-channel JPEG (CMYK, or YCCK as Photoshop saves CMYK), C, M, Y, K
/// per pixel with 255 for full ink; `None` for a JPEG of another colour space.
///
/// The `image` crate turns CMYK into RGB with a naive formula before a profile can be
/// applied, so the raw samples are taken from zune-jpeg, the decoder `image` itself uses.
/// Samples are stored inverted (Adobe's convention, which Photoshop and libjpeg-based
/// writers follow). YCCK holds the inverted C, M, Y as YCbCr and K as is; decoded to RGB
/// (JFIF's full-range equations, as libjpeg does), its R, G, B are the C, M, Y inks.
fn jpeg_inks(bytes: &[u8]) -> Result<Option<Vec<u8>>> {
    use zune_core::bytestream::ZCursor;
    use zune_core::colorspace::ColorSpace;
    use zune_jpeg::JpegDecoder;
    let decode_error = |e: zune_jpeg::errors::DecodeErrors| Error::Decode(e.to_string());
    let mut decoder = JpegDecoder::new(ZCursor::new(bytes));
    decoder.decode_headers().map_err(decode_error)?;
    let stored = match decoder.input_colorspace() {
        Some(stored @ (ColorSpace::CMYK | ColorSpace::YCCK)) => stored,
        _ => return Ok(None),
    };
    // Same colour space in and out: the decoder copies the samples without converting them.
    decoder.set_options(decoder.options().jpeg_set_out_colorspace(stored));
    let mut samples = decoder.decode().map_err(decode_error)?;
    for pixel in samples.as_chunks_mut::<4>().0 {
        if stored == ColorSpace::YCCK {
            let [y, cb, cr, _] = pixel.map(f32::from);
            let (cb, cr) = (cb - 128.0, cr - 128.0);
            pixel[0] = (y + 1.402 * cr).round().clamp(0.0, 255.0) as u8;
            pixel[1] = (y - 0.344_136 * cb - 0.714_136 * cr)
                .round()
                .clamp(0.0, 255.0) as u8;
            pixel[2] = (y + 1.772 * cb).round().clamp(0.0, 255.0) as u8;
        } else {
            for ink in &mut pixel[..3] {
                *ink = 255 - *ink;
            }
        }
        pixel[3] = 255 - pixel[3];
    }
    Ok(Some(samples))
}

/// CMYK inks (255 = full ink) through their profile into opaque sRGB.
fn cmyk_into_srgb(
    inks: &[u8],
    width: u32,
    height: u32,
    profile: &ColorProfile,
) -> Result<RgbaImage> {
    let transform = profile
        .create_transform_8bit(
            Layout::Rgba,
            &ColorProfile::new_srgb(),
            Layout::Rgb,
            TransformOptions::default(),
        )
        .map_err(|e| {
            Error::Decode(format!(
                "the JPEG's CMYK colour profile cannot be applied: {e}"
            ))
        })?;
    let mut rgb = vec![0; inks.len() / 4 * 3];
    transform
        .transform(inks, &mut rgb)
        .map_err(|e| Error::Decode(format!("the JPEG's CMYK colour profile failed: {e}")))?;
    let rgba = rgb
        .chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 255])
        .collect();
    RgbaImage::from_raw(width, height, rgba)
        .ok_or_else(|| Error::Decode("the CMYK JPEG's size differs from its header".into()))
}

/// Whether the JPEG's compressed data is followed by its end-of-image marker. The decoder
/// fills whatever is missing from a cut-off file with grey and reports success, so the
/// marker is looked for here (as Pillow refuses truncated files): the segments before the
/// first scan are skipped by their lengths (an EXIF thumbnail there has an end marker of its
/// own), then the marker is searched for in the rest, where the encoder escapes every 0xFF
/// data byte, so it cannot occur by chance.
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let mut at = 2; // after SOI
    while at + 4 <= bytes.len() {
        if bytes[at] != 0xff {
            return false;
        }
        let marker = bytes[at + 1];
        if marker == 0xff {
            at += 1; // fill byte
            continue;
        }
        let length = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
        at += 2 + length;
        if marker == 0xda {
            // Start of scan: the entropy-coded data (and any later scans) follow.
            return bytes
                .get(at..)
                .is_some_and(|rest| rest.windows(2).any(|w| w == [0xff, 0xd9]));
        }
    }
    false
}

/// Whether a RIFF file (WebP) holds all the bytes its header declares: the lossy decoder
/// too fills a cut-off picture in silently.
fn riff_is_complete(bytes: &[u8]) -> bool {
    bytes.len() >= 12
        && u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as u64 + 8
            <= bytes.len() as u64
}

/// Checks that every frame bitstream in a WebP fits its canvas (`width` x `height`, already
/// checked against the limits). The codec sizes its buffers by the frame's own header, not
/// the canvas, and outside the allocation limit it is given: a 1.5 KB file whose frame
/// claims 16383x16383 made it allocate 400 MB (found by tests/fuzz.rs).
fn webp_frames_within(bytes: &[u8], width: u32, height: u32) -> Result<()> {
    fn chunks(mut data: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
        std::iter::from_fn(move || {
            let header = data.get(..8)?;
            let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
            let body = data.get(8..8 + len).unwrap_or(&data[8..]);
            let (id, next) = (&header[..4], (8 + len + (len & 1)).min(data.len()));
            data = &data[next..];
            Some((id, body))
        })
    }
    fn check(id: &[u8], body: &[u8], width: u32, height: u32) -> Result<()> {
        let u24 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], 0]);
        let frame = match id {
            b"VP8 " if body.len() >= 10 => Some((
                u16::from_le_bytes([body[6], body[7]]) as u32 & 0x3fff,
                u16::from_le_bytes([body[8], body[9]]) as u32 & 0x3fff,
            )),
            b"VP8L" if body.len() >= 5 => {
                let bits = u32::from_le_bytes([body[1], body[2], body[3], body[4]]);
                Some((1 + (bits & 0x3fff), 1 + ((bits >> 14) & 0x3fff)))
            }
            b"ANMF" if body.len() >= 16 => {
                let (w, h) = (1 + u24(&body[6..9]), 1 + u24(&body[9..12]));
                if w > width || h > height {
                    return Err(too_big(w, h, width, height));
                }
                for (id, inner) in chunks(&body[16..]) {
                    check(id, inner, w, h)?;
                }
                None
            }
            _ => None,
        };
        match frame {
            Some((w, h)) if w > width || h > height => Err(too_big(w, h, width, height)),
            _ => Ok(()),
        }
    }
    fn too_big(w: u32, h: u32, width: u32, height: u32) -> Error {
        Error::Decode(format!(
            "the WebP is corrupt: a {w}x{h} frame in a {width}x{height} image"
        ))
    }
    for (id, body) in chunks(bytes.get(12..).unwrap_or_default()) {
        check(id, body, width, height)?;
    }
    Ok(())
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
