//! Encoding results: PNG (with alpha), JPEG (opaque, quality 80), WebP (lossless).

use std::io::Cursor;

use image::{ImageFormat, RgbaImage};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Png,
    Jpeg,
    WebP,
}

impl OutputFormat {
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::WebP => "webp",
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::WebP => "image/webp",
        }
    }
}

impl std::str::FromStr for OutputFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "png" => Ok(Self::Png),
            "jpg" | "jpeg" => Ok(Self::Jpeg),
            "webp" => Ok(Self::WebP),
            other => Err(Error::InvalidArgument(format!(
                "format must be png, jpg or webp, not '{other}'"
            ))),
        }
    }
}

/// JPEG has no alpha: transparent pixels are flattened onto white, as the hosted APIs do.
pub fn encode(image: &RgbaImage, format: OutputFormat) -> Result<Vec<u8>> {
    let mut out = Cursor::new(Vec::new());
    let result = match format {
        OutputFormat::Png => image.write_to(&mut out, ImageFormat::Png),
        OutputFormat::WebP => image.write_to(&mut out, ImageFormat::WebP),
        OutputFormat::Jpeg => {
            let flat = flatten_on_white(image);
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80).encode_image(&flat)
        }
    };
    result.map_err(|e| Error::Encode(e.to_string()))?;
    Ok(out.into_inner())
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
