//! remove.bg's `/v1.0/removebg` parameters. Unknown parameters are ignored, as remove.bg
//! does; declared ones are checked.

use super::params::{Kind, Param, Params, param};
use super::{
    Background, Channels, Edit, FieldError, Fill, Format, FrameLayout, Layout, Length, Shadow,
    ShadowMode, Sides,
};

pub const REMOVEBG: &[Param] = &[
    param("image_file", Kind::File, "The image (multipart)."),
    param("image_file_b64", Kind::Text, "The image, base64 encoded."),
    param("image_url", Kind::Url, "URL of the image."),
    param(
        "size",
        Kind::Enum(&[
            "preview", "small", "regular", "medium", "hd", "full", "4k", "50MP", "auto",
        ]),
        "preview (0.25 MP, default), full, 50MP, auto; legacy medium (1.5 MP) and hd (4 MP).",
    ),
    param(
        "type",
        Kind::Enum(&[
            "auto",
            "person",
            "product",
            "car",
            "animal",
            "graphic",
            "transportation",
        ]),
        "Foreground type; echoed in X-Type when given (cutout does not classify).",
    ),
    param(
        "type_level",
        Kind::Enum(&["none", "1", "2", "latest"]),
        "Accepted for compatibility.",
    ),
    param(
        "format",
        Kind::Enum(&["auto", "png", "jpg", "zip", "webp"]),
        "auto (PNG when transparent, else JPEG, default), png, jpg, zip, webp.",
    ),
    param(
        "roi",
        Kind::Text,
        "Region of interest 'x1 y1 x2 y2', each in px or %.",
    ),
    param(
        "crop",
        Kind::Bool,
        "Crop off empty borders (default false).",
    ),
    param(
        "crop_margin",
        Kind::Text,
        "Margin around the cropped subject: 1, 2 or 4 values, px or % of the subject size.",
    ),
    param(
        "scale",
        Kind::Text,
        "10%..100% of the canvas, or original (default).",
    ),
    param("position", Kind::Text, "original, center, 'X%' or 'X% Y%'."),
    param(
        "channels",
        Kind::Enum(&["rgba", "alpha"]),
        "rgba (default) or alpha.",
    ),
    param(
        "bg_color",
        Kind::Color,
        "Background colour: hex (81d4fa, fff, 81d4fa77) or a colour name.",
    ),
    param(
        "bg_image_url",
        Kind::Url,
        "URL of a background image (covers the canvas).",
    ),
    param(
        "bg_image_file",
        Kind::File,
        "A background image (multipart; covers the canvas).",
    ),
    param(
        "semitransparency",
        Kind::Bool,
        "Accepted; only affects car windows at remove.bg.",
    ),
    param("add_shadow", Kind::Bool, "Deprecated; true adds a shadow."),
    param(
        "shadow_type",
        Kind::Enum(&["auto", "car", "3D", "drop", "none"]),
        "Shadow kind (default none).",
    ),
    param("shadow_opacity", Kind::Text, "0..100 or auto."),
    param(
        "shadow_method",
        Kind::Text,
        "Removed in 2021; accepted and ignored.",
    ),
];

/// Parses remove.bg parameters. Source parameters (`image_*`, `bg_image_*`) are checked by
/// the caller, which owns the bytes.
pub fn parse(values: Vec<(String, String)>) -> Result<Edit, FieldError> {
    let values = values
        .into_iter()
        .filter(|(name, _)| REMOVEBG.iter().any(|p| p.name == name))
        .collect();
    let p = Params::new(REMOVEBG, values);
    p.check_all()?;

    let format = match p.text("format")? {
        Some("png") => Format::Png,
        Some("jpg") => Format::Jpeg,
        Some("zip") => Format::Zip,
        Some("webp") => Format::WebP,
        _ => Format::Auto,
    };
    let full_limit = if format == Format::Png {
        10_000_000
    } else {
        25_000_000
    };
    let max_pixels = match p.text("size")? {
        Some("full" | "4k" | "auto") => full_limit,
        Some("50MP") => {
            if format == Format::Png {
                10_000_000
            } else {
                50_000_000
            }
        }
        Some("medium") => 1_500_000,
        Some("hd") => 4_000_000,
        _ => 250_000,
    };

    let bg_image = p.has("bg_image_url") || p.has("bg_image_file");
    let bg_sources = [
        p.has("bg_color"),
        p.has("bg_image_url"),
        p.has("bg_image_file"),
    ];
    if bg_sources.iter().filter(|&&given| given).count() > 1 {
        return Err(FieldError::new(
            "bg_sources",
            "bg_color, bg_image_url and bg_image_file are mutually exclusive",
        ));
    }
    let fill = if bg_image {
        Fill::Image(super::Scaling::Fill)
    } else {
        p.color("bg_color")?.map_or(Fill::Transparent, Fill::Color)
    };

    let crop = p.bool("crop")?.unwrap_or(false);
    let crop_margin = match p.text("crop_margin")? {
        Some(text) => parse_crop_margin(text).ok_or_else(|| {
            FieldError::new("crop_margin", format!("invalid crop_margin '{text}'"))
        })?,
        None => Sides::all(Length::Pixels(0.0)),
    };
    let scale = match p.text("scale")?.map(str::trim) {
        None | Some("original") => None,
        Some(text) => Some(
            parse_percent(text)
                .filter(|s| (0.1..=1.0).contains(s))
                .ok_or_else(|| {
                    FieldError::new(
                        "scale",
                        format!("must be 10%..100% or original, not '{text}'"),
                    )
                })?,
        ),
    };
    let position = match p.text("position")?.map(str::trim) {
        None | Some("original") => None,
        Some("center") => Some([0.5, 0.5]),
        Some(text) => Some(parse_position(text).ok_or_else(|| {
            FieldError::new(
                "position",
                format!("must be original, center, 'X%' or 'X% Y%', not '{text}'"),
            )
        })?),
    };
    let region_of_interest = match p.text("roi")? {
        None => None,
        Some(text) => Some(parse_roi(text).ok_or_else(|| {
            FieldError::new(
                "roi",
                format!("must be 'x1 y1 x2 y2' in px or %, not '{text}'"),
            )
        })?),
    };

    let shadow_kind = match p.text("shadow_type")? {
        Some("none") => None,
        Some("3D") => Some(ShadowMode::Hard),
        Some(_) => Some(ShadowMode::Soft),
        None if p.bool("add_shadow")? == Some(true) => Some(ShadowMode::Soft),
        None => None,
    };
    let opacity = match p.text("shadow_opacity")?.map(str::trim) {
        None | Some("auto") => 1.0,
        Some(text) => match text.parse::<f32>() {
            // remove.bg's automatic opacity is 50; scale the mode's own strength around it.
            Ok(v) if (0.0..=100.0).contains(&v) => v / 50.0,
            _ => return Err(FieldError::new("shadow_opacity", "must be 0..100 or auto")),
        },
    };

    let edit = Edit {
        region_of_interest,
        background: Background { fill, blur: None },
        shadow: shadow_kind.map(|mode| Shadow { mode, opacity }),
        layout: Layout::Frame(FrameLayout {
            crop: crop.then_some(crop_margin),
            scale: if crop { None } else { scale },
            position: if crop { None } else { position },
        }),
        max_pixels: Some(max_pixels),
        channels: if p.text("channels")? == Some("alpha") {
            Channels::Alpha
        } else {
            Channels::Rgba
        },
        format,
        ..Edit::default()
    };
    edit.validate()?;
    Ok(edit)
}

/// The remove.bg field error code for a failed parameter (`invalid_scale`, …).
pub fn error_code(field: &str) -> &'static str {
    match field {
        "size" => "invalid_size",
        "format" => "invalid_format",
        "roi" => "invalid_roi",
        "crop_margin" => "invalid_crop_margin",
        "scale" => "invalid_scale",
        "position" => "invalid_position",
        "channels" => "invalid_channels",
        "bg_color" => "invalid_bg_color",
        "bg_image_url" => "invalid_bg_image_url",
        "image_url" => "invalid_image_url",
        "semitransparency" => "invalid_semitransparency",
        "bg_sources" => "multiple_bg_sources",
        _ => "invalid_parameter",
    }
}

fn parse_percent(text: &str) -> Option<f32> {
    let v: f32 = text.strip_suffix('%')?.trim().parse().ok()?;
    v.is_finite().then_some(v / 100.0)
}

fn parse_position(text: &str) -> Option<[f32; 2]> {
    let parts: Vec<f32> = text
        .split_whitespace()
        .map(parse_percent)
        .collect::<Option<_>>()?;
    let ok = |v: f32| (0.0..=1.0).contains(&v);
    match parts[..] {
        [both] if ok(both) => Some([both, both]),
        [h, v] if ok(h) && ok(v) => Some([h, v]),
        _ => None,
    }
}

/// `Npx`, `N%` (a ratio) or a bare `0`.
fn parse_length(text: &str) -> Option<Length> {
    if let Some(px) = text.strip_suffix("px") {
        let v: f32 = px.parse().ok()?;
        return (v.is_finite() && v >= 0.0).then_some(Length::Pixels(v));
    }
    if text.ends_with('%') {
        let r = parse_percent(text)?;
        return (r >= 0.0).then_some(Length::Ratio(r));
    }
    let v: f32 = text.parse().ok()?;
    (v == 0.0).then_some(Length::Pixels(0.0))
}

fn parse_crop_margin(text: &str) -> Option<Sides<Length>> {
    let values: Vec<Length> = text
        .split_whitespace()
        .map(parse_length)
        .collect::<Option<_>>()?;
    match values[..] {
        [all] => Some(Sides::all(all)),
        [vertical, horizontal] => Some(Sides {
            top: vertical,
            right: horizontal,
            bottom: vertical,
            left: horizontal,
        }),
        [top, right, bottom, left] => Some(Sides {
            top,
            right,
            bottom,
            left,
        }),
        _ => None,
    }
}

fn parse_roi(text: &str) -> Option<[Length; 4]> {
    let values: Vec<Length> = text
        .split_whitespace()
        .map(parse_length)
        .collect::<Option<_>>()?;
    values.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_pairs(pairs: &[(&str, &str)]) -> Result<Edit, FieldError> {
        parse(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn python_client_defaults_parse() {
        let edit = parse_pairs(&[
            ("size", "regular"),
            ("type_level", "none"),
            ("roi", "0 0 100% 100%"),
            ("crop", "false"),
            ("add_shadow", "false"),
            ("semitransparency", "true"),
            ("scale", "original"),
            ("position", "original"),
            ("unknown_thing", "whatever"),
        ])
        .unwrap();
        assert_eq!(edit.max_pixels, Some(250_000));
        assert_eq!(
            edit.region_of_interest,
            Some([
                Length::Pixels(0.0),
                Length::Pixels(0.0),
                Length::Ratio(1.0),
                Length::Ratio(1.0)
            ])
        );
        assert_eq!(edit.format, Format::Auto);
    }

    #[test]
    fn bad_values_name_their_code() {
        let code = |pairs: &[(&str, &str)]| error_code(&parse_pairs(pairs).unwrap_err().field);
        assert_eq!(code(&[("scale", "5%")]), "invalid_scale");
        assert_eq!(code(&[("position", "left")]), "invalid_position");
        assert_eq!(
            code(&[("crop_margin", "1px 2px 3px")]),
            "invalid_crop_margin"
        );
        assert_eq!(code(&[("roi", "0 0 10")]), "invalid_roi");
        assert_eq!(code(&[("size", "huge")]), "invalid_size");
        assert_eq!(code(&[("bg_color", "nope")]), "invalid_bg_color");
        assert_eq!(
            code(&[("bg_color", "fff"), ("bg_image_url", "https://a/b.jpg")]),
            "multiple_bg_sources"
        );
    }

    #[test]
    fn crop_margin_css_order() {
        let edit = parse_pairs(&[("crop", "true"), ("crop_margin", "10px 5%")]).unwrap();
        let Layout::Frame(frame) = edit.layout else {
            panic!()
        };
        let margin = frame.crop.unwrap();
        assert_eq!(margin.top, Length::Pixels(10.0));
        assert_eq!(margin.left, Length::Ratio(0.05));
    }
}
