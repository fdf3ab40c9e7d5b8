//! Encoding results: PNG (with alpha), JPEG (opaque, quality 80), WebP (lossy, quality 90,
//! alpha kept lossless).

use std::io::Cursor;

use image::RgbaImage;

use crate::error::{Error, Result};

/// PhotoRoom's WebP quality; libwebp keeps the alpha plane lossless.
const WEBP_QUALITY: f32 = 90.0;

fn encode_webp(image: &RgbaImage) -> Vec<u8> {
    let (width, height) = image.dimensions();
    let opaque = image.pixels().all(|p| p.0[3] == 255);
    let encoded = if opaque {
        let rgb = image::DynamicImage::ImageRgba8(image.clone()).into_rgb8();
        webp::Encoder::from_rgb(rgb.as_raw(), width, height).encode(WEBP_QUALITY)
    } else {
        webp::Encoder::from_rgba(image.as_raw(), width, height).encode(WEBP_QUALITY)
    };
    encoded.to_vec()
}

fn flatten_on_white(image: &RgbaImage) -> image::RgbImage {
    image::RgbImage::from_fn(image.width(), image.height(), |x, y| {
        let [r, g, b, a] = image.get_pixel(x, y).0;
        let over = |c: u8| {
            let a = a as u32;
            ((c as u32 * a + 255 * (255 - a) + 127) / 255) as u8
        };
        image::Rgb([over(r), over(g), over(b)])
    })
}

/// An encoded result.
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub mime: &'static str,
    pub extension: &'static str,
}

/// Encodes a composed result as an edit asks (the one encoder entry of the CLI, the server
/// and the benches). JPEG has no alpha: transparent pixels are flattened onto white, as the
/// hosted APIs do. PNG (RGBA, RGB or grey by `channels`, with
/// dpi), JPEG quality 80 (with dpi), WebP (lossy quality 90, alpha lossless), remove.bg's `auto` (PNG when any pixel
/// is transparent, else JPEG) and ZIP (`color.jpg` + `alpha.png`).
pub fn encode_result(
    image: &RgbaImage,
    format: crate::edit::Format,
    channels: crate::edit::Channels,
    dpi: Option<u32>,
) -> Result<Encoded> {
    use crate::edit::{Channels, Format};
    let format = match format {
        Format::Auto if image.pixels().any(|p| p.0[3] < 255) => Format::Png,
        Format::Auto => Format::Jpeg,
        other => other,
    };
    let encoded = |bytes, mime, extension| Encoded {
        bytes,
        mime,
        extension,
    };
    match format {
        Format::Png => {
            let (kind, data) = match channels {
                Channels::Rgba => (png::ColorType::Rgba, image.as_raw().clone()),
                Channels::Rgb => (png::ColorType::Rgb, rgb_bytes(image)),
                Channels::Alpha => (png::ColorType::Grayscale, red_bytes(image)),
            };
            let bytes = write_png(image.width(), image.height(), kind, &data, dpi)?;
            Ok(encoded(bytes, "image/png", "png"))
        }
        Format::Jpeg => Ok(encoded(write_jpeg(image, dpi)?, "image/jpeg", "jpg")),
        Format::WebP => Ok(encoded(encode_webp(image), "image/webp", "webp")),
        Format::Zip => {
            let color = image::RgbImage::from_raw(image.width(), image.height(), rgb_bytes(image))
                .expect("sizes match");
            let mut jpeg = Cursor::new(Vec::new());
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)
                .encode_image(&color)
                .map_err(|e| Error::Encode(e.to_string()))?;
            let alpha: Vec<u8> = image.pixels().map(|p| p.0[3]).collect();
            let alpha = write_png(
                image.width(),
                image.height(),
                png::ColorType::Grayscale,
                &alpha,
                dpi,
            )?;
            let zip = stored_zip(&[("color.jpg", &jpeg.into_inner()), ("alpha.png", &alpha)]);
            Ok(encoded(zip, "application/zip", "zip"))
        }
        Format::Auto => unreachable!("resolved above"),
    }
}

fn rgb_bytes(image: &RgbaImage) -> Vec<u8> {
    image
        .pixels()
        .flat_map(|p| [p.0[0], p.0[1], p.0[2]])
        .collect()
}

fn red_bytes(image: &RgbaImage) -> Vec<u8> {
    image.pixels().map(|p| p.0[0]).collect()
}

fn write_png(
    width: u32,
    height: u32,
    kind: png::ColorType,
    data: &[u8],
    dpi: Option<u32>,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(kind);
    encoder.set_depth(png::BitDepth::Eight);
    // Decoding converted every input into sRGB; say so (sRGB chunk, with its gAMA/cHRM).
    encoder.set_source_srgb(png::SrgbRenderingIntent::Perceptual);
    // fdeflate, tuned for PNG: a 0.25 MP cut-out in 8 ms where the default (miniz at
    // `Balanced`) took 100 ms; files come out about 15 % larger than zlib level 6's.
    encoder.set_compression(png::Compression::Fast);
    if let Some(dpi) = dpi {
        let per_metre = (dpi as f64 / 0.0254).round() as u32;
        encoder.set_pixel_dims(Some(png::PixelDimensions {
            xppu: per_metre,
            yppu: per_metre,
            unit: png::Unit::Meter,
        }));
    }
    let fail = |e: png::EncodingError| Error::Encode(e.to_string());
    let mut writer = encoder.write_header().map_err(fail)?;
    writer.write_image_data(data).map_err(fail)?;
    writer.finish().map_err(fail)?;
    Ok(out)
}

fn write_jpeg(image: &RgbaImage, dpi: Option<u32>) -> Result<Vec<u8>> {
    let flat = flatten_on_white(image);
    let mut out = Cursor::new(Vec::new());
    let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80);
    if let Some(dpi) = dpi {
        encoder.set_pixel_density(image::codecs::jpeg::PixelDensity::dpi(dpi as u16));
    }
    encoder
        .encode_image(&flat)
        .map_err(|e| Error::Encode(e.to_string()))?;
    Ok(out.into_inner())
}

/// A ZIP archive with the files stored uncompressed (they are compressed images already).
fn stored_zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in files {
        let offset = out.len() as u32;
        let crc = crc32fast::hash(data);
        let header = |out: &mut Vec<u8>, signature: u32, central_entry: bool| {
            out.extend(signature.to_le_bytes());
            if central_entry {
                out.extend(20u16.to_le_bytes()); // made by
            }
            out.extend(20u16.to_le_bytes()); // version needed
            out.extend(0u16.to_le_bytes()); // flags
            out.extend(0u16.to_le_bytes()); // stored
            out.extend(0u16.to_le_bytes()); // time
            out.extend(0x21u16.to_le_bytes()); // date: 1980-01-01
            out.extend(crc.to_le_bytes());
            out.extend((data.len() as u32).to_le_bytes());
            out.extend((data.len() as u32).to_le_bytes());
            out.extend((name.len() as u16).to_le_bytes());
            out.extend(0u16.to_le_bytes()); // extra length
            if central_entry {
                out.extend(0u16.to_le_bytes()); // comment length
                out.extend(0u16.to_le_bytes()); // disk
                out.extend(0u16.to_le_bytes()); // internal attributes
                out.extend(0u32.to_le_bytes()); // external attributes
                out.extend(offset.to_le_bytes());
            }
            out.extend(name.as_bytes());
        };
        header(&mut out, 0x0403_4b50, false);
        out.extend_from_slice(data);
        header(&mut central, 0x0201_4b50, true);
    }
    let central_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out.extend((files.len() as u16).to_le_bytes());
    out.extend((files.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(central_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use image::ImageFormat;

    use super::*;

    fn webp(image: &RgbaImage) -> Vec<u8> {
        use crate::edit::{Channels, Format};
        encode_result(image, Format::WebP, Channels::Rgba, None)
            .unwrap()
            .bytes
    }

    /// A smooth photo-like gradient with a soft-edged transparent disc cut out of it.
    fn sample() -> RgbaImage {
        RgbaImage::from_fn(256, 192, |x, y| {
            let d = ((x as f32 - 128.0).powi(2) + (y as f32 - 96.0).powi(2)).sqrt();
            let a = ((d - 50.0) * 16.0).clamp(0.0, 255.0) as u8;
            image::Rgba([x as u8, y as u8, (x + y) as u8 / 2, a])
        })
    }

    #[test]
    fn webp_is_lossy_quality_90_with_exact_alpha() {
        let original = sample();
        let bytes = webp(&original);
        let mut lossless = Cursor::new(Vec::new());
        original.write_to(&mut lossless, ImageFormat::WebP).unwrap();
        assert!(
            bytes.len() < lossless.get_ref().len() / 2,
            "{} bytes",
            bytes.len()
        );

        let decoded = image::load_from_memory_with_format(&bytes, ImageFormat::WebP)
            .unwrap()
            .into_rgba8();
        assert_eq!(decoded.dimensions(), original.dimensions());
        let (mut colour_error, mut opaque) = (0.0, 0.0);
        for (d, o) in decoded.pixels().zip(original.pixels()) {
            assert_eq!(d.0[3], o.0[3], "alpha is kept exactly");
            if o.0[3] == 255 {
                colour_error += (0..3)
                    .map(|c| (d.0[c] as f32 - o.0[c] as f32).abs())
                    .sum::<f32>();
                opaque += 3.0;
            }
        }
        let mean = colour_error / opaque;
        assert!(
            mean < 2.0,
            "quality 90 keeps colours close: mean error {mean}"
        );
    }

    #[test]
    fn png_results_are_tagged_srgb() {
        use crate::edit::{Channels, Format};
        for channels in [Channels::Rgba, Channels::Rgb, Channels::Alpha] {
            let bytes = encode_result(&sample(), Format::Png, channels, None)
                .unwrap()
                .bytes;
            let mut reader = png::Decoder::new(Cursor::new(bytes)).read_info().unwrap();
            let info = reader.info();
            assert_eq!(
                info.srgb,
                Some(png::SrgbRenderingIntent::Perceptual),
                "{channels:?}"
            );
            let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
            reader.next_frame(&mut pixels).unwrap();
        }
    }

    #[test]
    fn opaque_webp_has_no_alpha_plane() {
        let mut original = sample();
        original.pixels_mut().for_each(|p| p.0[3] = 255);
        let bytes = webp(&original);
        let decoded = image::load_from_memory_with_format(&bytes, ImageFormat::WebP).unwrap();
        assert!(!decoded.color().has_alpha());
    }
}
