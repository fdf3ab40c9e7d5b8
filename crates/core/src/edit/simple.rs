//! The simple remove-background API: `format`, `channels`, `bg_color`, `size` (longest
//! side) and `crop`.

use super::params::{Kind, Param, Params, param};
use super::{
    Background, Channels, Edit, FieldError, Fill, Format, FrameLayout, Layout, Length, Sides,
};

pub const SIMPLE: &[Param] = &[
    param(
        "image",
        Kind::File,
        "The image (JPEG, PNG or WebP; at most 20 MB).",
    ),
    param(
        "format",
        Kind::Enum(&["png", "jpg", "webp"]),
        "Output format (default png).",
    ),
    param(
        "channels",
        Kind::Enum(&["rgba", "rgb"]),
        "rgba (default) or rgb: opaque over bg_color (white by default).",
    ),
    param(
        "bg_color",
        Kind::Color,
        "Background colour: #ffffff, #fff, rgb(255, 255, 255) or a name.",
    ),
    param(
        "size",
        Kind::Enum(&["full", "preview", "small", "medium", "large"]),
        "full (default), preview 256, small 512, medium 1024, large 2048 px longest side.",
    ),
    param("crop", Kind::Bool, "Crop to the subject's bounds."),
];

pub fn parse(values: Vec<(String, String)>) -> Result<Edit, FieldError> {
    let p = Params::new(SIMPLE, values);
    p.check_all()?;
    let color = p.color("bg_color")?;
    let channels = if p.text("channels")? == Some("rgb") {
        Channels::Rgb
    } else {
        Channels::Rgba
    };
    let fill = match (color, channels) {
        (Some(color), _) => Fill::Color(color),
        (None, Channels::Rgb) => Fill::Color(super::Color::WHITE),
        (None, _) => Fill::Transparent,
    };
    let edit = Edit {
        background: Background { fill, blur: None },
        layout: Layout::Frame(FrameLayout {
            crop: (p.bool("crop")? == Some(true)).then(|| Sides::all(Length::Pixels(0.0))),
            ..Default::default()
        }),
        max_side: match p.text("size")? {
            Some("preview") => Some(256),
            Some("small") => Some(512),
            Some("medium") => Some(1024),
            Some("large") => Some(2048),
            _ => None,
        },
        channels,
        format: match p.text("format")? {
            Some("jpg") => Format::Jpeg,
            Some("webp") => Format::WebP,
            _ => Format::Png,
        },
        ..Edit::default()
    };
    edit.validate()?;
    Ok(edit)
}
