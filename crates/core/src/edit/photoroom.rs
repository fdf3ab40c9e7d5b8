//! PhotoRoom's parameters: `/v2/edit` (dot notation) and `/v1/segment`.

use super::params::{Kind, Param, Params, param};
use super::{
    Align, Background, Blur, BlurMode, CanvasLayout, Channels, Edit, FieldError, Fill, Format,
    FrameLayout, Layout, Outline, OutputSize, ReferenceBox, Scaling, Shadow, ShadowMode, Sides,
};

const BOOL: Kind = Kind::Bool;
const SPACING: Kind = Kind::Spacing;
const SPACING_DOC: &str =
    "A ratio between 0 and 0.49, a percentage string between 0% and 49%, or pixels like 100px.";

/// Every `/v2/edit` parameter cutout implements.
pub const V2_EDIT: &[Param] = &[
    param(
        "imageUrl",
        Kind::Url,
        "URL of the main image (GET); at most 30 MB.",
    ),
    param(
        "imageFile",
        Kind::File,
        "The main image (POST, multipart); at most 30 MB.",
    ),
    param(
        "removeBackground",
        BOOL,
        "Remove the background (default true).",
    ),
    param(
        "keepExistingAlphaChannel",
        Kind::Enum(&["auto", "never"]),
        "auto: use the input's own transparency as the cut-out when it has any (default never).",
    ),
    param(
        "background.color",
        Kind::Color,
        "Background colour: hex without # (FF0000, FF0000EE) or a colour name. Default transparent.",
    ),
    param(
        "background.imageUrl",
        Kind::Url,
        "URL of a background image.",
    ),
    param(
        "background.imageFile",
        Kind::File,
        "A background image (POST).",
    ),
    param(
        "background.scaling",
        Kind::Enum(&["fit", "fill"]),
        "How the background image covers the output (default fill).",
    ),
    param(
        "background.blur.mode",
        Kind::Enum(&["gaussian", "bokeh"]),
        "Blur the original background behind the subject.",
    ),
    param(
        "background.blur.radius",
        Kind::Number {
            min: 0.0,
            max: 0.05,
        },
        "Blur radius as a ratio of the image size (default 0.01).",
    ),
    param(
        "outline.color",
        Kind::Color,
        "Draw an outline of this colour around the subject.",
    ),
    param(
        "outline.width",
        Kind::Number { min: 0.0, max: 0.1 },
        "Outline width as a ratio of the image size (default 0.03).",
    ),
    param(
        "outline.blurRadius",
        Kind::Number {
            min: 0.0,
            max: 0.025,
        },
        "Outline blur as a ratio of the image size (default 0).",
    ),
    param(
        "shadow.mode",
        Kind::Enum(&["ai.soft", "ai.hard", "ai.floating"]),
        "Render a shadow under the subject.",
    ),
    param(
        "outputSize",
        Kind::Text,
        "auto, originalImage, croppedSubject or WIDTHxHEIGHT (default auto).",
    ),
    param(
        "maxWidth",
        Kind::Integer {
            min: 1,
            max: 100_000,
        },
        "Upper bound on the output width (with outputSize originalImage or croppedSubject).",
    ),
    param(
        "maxHeight",
        Kind::Integer {
            min: 1,
            max: 100_000,
        },
        "Upper bound on the output height (with outputSize originalImage or croppedSubject).",
    ),
    param("padding", SPACING, SPACING_DOC),
    param("paddingTop", SPACING, SPACING_DOC),
    param("paddingRight", SPACING, SPACING_DOC),
    param("paddingBottom", SPACING, SPACING_DOC),
    param("paddingLeft", SPACING, SPACING_DOC),
    param("margin", SPACING, SPACING_DOC),
    param("marginTop", SPACING, SPACING_DOC),
    param("marginRight", SPACING, SPACING_DOC),
    param("marginBottom", SPACING, SPACING_DOC),
    param("marginLeft", SPACING, SPACING_DOC),
    param(
        "scaling",
        Kind::Enum(&["fit", "fill"]),
        "Whether the subject fits in (default) or fills the target area.",
    ),
    param(
        "horizontalAlignment",
        Kind::Enum(&["left", "center", "right"]),
        "Horizontal alignment; turns off snapping horizontally.",
    ),
    param(
        "verticalAlignment",
        Kind::Enum(&["top", "center", "bottom"]),
        "Vertical alignment; turns off snapping vertically.",
    ),
    param(
        "referenceBox",
        Kind::Enum(&["subjectBox", "originalImage"]),
        "What is placed: the subject box (default) or the whole original frame.",
    ),
    param(
        "ignorePaddingAndSnapOnCroppedSides",
        BOOL,
        "Snap cropped sides of the subject to the edges (default true).",
    ),
    param(
        "export.format",
        Kind::Enum(&["png", "jpeg", "jpg", "webp"]),
        "Output format (default png); JPEG quality 80, WebP quality 90.",
    ),
    param(
        "export.dpi",
        Kind::Integer { min: 72, max: 1200 },
        "Pixel density written into the result.",
    ),
    param(
        "preserveMetadata",
        Kind::Enum(&["never"]),
        "Only never is supported: no metadata is copied.",
    ),
];

/// Parameter families that need a generative model cutout does not have.
pub const GENERATIVE: &[&str] = &[
    "background.prompt",
    "background.negativePrompt",
    "background.expandPrompt",
    "background.guidance.",
    "background.seed",
    "beautify.",
    "lighting.",
    "textRemoval.",
    "expand.",
    "uncrop.",
    "upscale.",
    "editWithAI.",
    "describeAnyChange.",
    "imageFromPrompt.",
    "flatLay.",
    "ghostMannequin.",
    "virtualModel.",
    "templateId",
    "segmentation.",
];

pub fn is_generative(name: &str) -> bool {
    GENERATIVE
        .iter()
        .any(|prefix| name == *prefix || (prefix.ends_with('.') && name.starts_with(prefix)))
}

/// Parses `/v2/edit` parameters (files appear as keys with empty values).
pub fn parse_v2_edit(values: Vec<(String, String)>) -> Result<Edit, FieldError> {
    if let Some((name, _)) = values.iter().find(|(name, _)| is_generative(name)) {
        return Err(FieldError::new(
            name,
            "needs a generative model, which this server does not have",
        ));
    }
    let p = Params::new(V2_EDIT, values);
    p.check_all()?;

    let remove_background = p.bool("removeBackground")?.unwrap_or(true);
    let background_image = p.has("background.imageUrl") || p.has("background.imageFile");
    if p.has("background.imageUrl") && p.has("background.imageFile") {
        return Err(FieldError::new(
            "background.imageUrl",
            "can't be provided together with background.imageFile",
        ));
    }
    if p.has("imageUrl") && p.has("imageFile") {
        return Err(FieldError::new(
            "imageUrl",
            "can't be provided together with imageFile",
        ));
    }
    if !remove_background {
        for name in [
            "background.imageUrl",
            "background.imageFile",
            "ignorePaddingAndSnapOnCroppedSides",
        ] {
            if p.has(name) {
                return Err(FieldError::new(
                    name,
                    "can't be provided if removeBackground is false",
                ));
            }
        }
    }
    if p.has("background.scaling") && !background_image {
        return Err(FieldError::new(
            "background.scaling",
            "can only be provided with background.imageUrl or background.imageFile",
        ));
    }

    let fill = if background_image {
        let scaling = match p.text("background.scaling")? {
            Some("fit") => Scaling::Fit,
            _ => Scaling::Fill,
        };
        if p.has("background.color") {
            return Err(FieldError::new(
                "background.color",
                "can't be provided together with a background image",
            ));
        }
        Fill::Image(scaling)
    } else {
        p.color("background.color")?
            .map_or(Fill::Transparent, Fill::Color)
    };
    let blur_mode = p.text("background.blur.mode")?;
    let blur_radius = p.number("background.blur.radius")?;
    let blur = (blur_mode.is_some() || blur_radius.is_some()).then(|| Blur {
        mode: if blur_mode == Some("bokeh") {
            BlurMode::Bokeh
        } else {
            BlurMode::Gaussian
        },
        radius: blur_radius.unwrap_or(0.01) as f32,
    });

    let outline = match p.color("outline.color")? {
        Some(color) => Some(Outline {
            color,
            width: p.number("outline.width")?.unwrap_or(0.03) as f32,
            blur_radius: p.number("outline.blurRadius")?.unwrap_or(0.0) as f32,
        }),
        None => {
            for name in ["outline.width", "outline.blurRadius"] {
                if p.has(name) {
                    return Err(FieldError::new(name, "needs outline.color"));
                }
            }
            None
        }
    };
    let shadow = p.text("shadow.mode")?.map(|mode| Shadow {
        mode: match mode {
            "ai.hard" => ShadowMode::Hard,
            "ai.floating" => ShadowMode::Floating,
            _ => ShadowMode::Soft,
        },
        opacity: 1.0,
    });

    let output_size = match p.text("outputSize")? {
        None | Some("auto") => OutputSize::Auto,
        Some("originalImage") => OutputSize::OriginalImage,
        Some("croppedSubject") => OutputSize::CroppedSubject,
        Some(other) => parse_dimensions(other).ok_or_else(|| {
            FieldError::new(
                "outputSize",
                format!(
                    "must be auto, originalImage, croppedSubject or WIDTHxHEIGHT, not '{other}'"
                ),
            )
        })?,
    };
    let sides = |base: &str| -> Result<Sides<Option<super::Length>>, FieldError> {
        let general = p.spacing(base)?;
        let side = |suffix: &str| -> Result<_, FieldError> {
            Ok(p.spacing(&format!("{base}{suffix}"))?.or(general))
        };
        Ok(Sides {
            top: side("Top")?,
            right: side("Right")?,
            bottom: side("Bottom")?,
            left: side("Left")?,
        })
    };
    let align = |name: &str| -> Result<Option<Align>, FieldError> {
        Ok(p.text(name)?.map(|v| match v {
            "left" | "top" => Align::Start,
            "right" | "bottom" => Align::End,
            _ => Align::Center,
        }))
    };
    let reference_box = match (remove_background, p.text("referenceBox")?) {
        (false, _) | (true, Some("originalImage")) => ReferenceBox::OriginalImage,
        _ => ReferenceBox::SubjectBox,
    };
    let layout = Layout::Canvas(CanvasLayout {
        output_size,
        max_width: p.number("maxWidth")?.map(|v| v as u32),
        max_height: p.number("maxHeight")?.map(|v| v as u32),
        margin: sides("margin")?,
        padding: sides("padding")?,
        scaling: if p.text("scaling")? == Some("fill") {
            Scaling::Fill
        } else {
            Scaling::Fit
        },
        horizontal: align("horizontalAlignment")?,
        vertical: align("verticalAlignment")?,
        reference_box,
        snap_cropped_sides: p
            .bool("ignorePaddingAndSnapOnCroppedSides")?
            .unwrap_or(true),
    });
    let format = match p.text("export.format")? {
        Some("jpeg" | "jpg") => Format::Jpeg,
        Some("webp") => Format::WebP,
        _ => Format::Png,
    };

    let edit = Edit {
        remove_background,
        keep_existing_alpha: p.text("keepExistingAlphaChannel")? == Some("auto"),
        background: Background { fill, blur },
        outline,
        shadow,
        layout,
        format,
        dpi: p.number("export.dpi")?.map(|v| v as u32),
        ..Edit::default()
    };
    edit.validate()?;
    Ok(edit)
}

fn parse_dimensions(text: &str) -> Option<OutputSize> {
    let (w, h) = text.split_once('x')?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(w) || !all_digits(h) {
        return None;
    }
    Some(OutputSize::Exact(w.parse().ok()?, h.parse().ok()?))
}

/// `/v1/segment` parameters.
pub const V1_SEGMENT: &[Param] = &[
    param("image_file", Kind::File, "The image to cut out (required)."),
    param(
        "format",
        Kind::Enum(&["png", "jpg", "webp"]),
        "Output format (default png).",
    ),
    param(
        "channels",
        Kind::Enum(&["rgba", "alpha"]),
        "rgba: the cut-out (default); alpha: the matte only.",
    ),
    param(
        "bg_color",
        Kind::Color,
        "Background colour: hex (#FF00FF) or an HTML colour name. Default transparent.",
    ),
    param(
        "size",
        Kind::Enum(&["preview", "medium", "hd", "full"]),
        "Output pixel budget: preview 0.25 MP, medium 1.5 MP, hd 4 MP, full 36 MP (default).",
    ),
    param(
        "crop",
        Kind::Bool,
        "Crop the result to the cut-out's border (default false).",
    ),
    param(
        "despill",
        Kind::Bool,
        "Remove green-screen colour spill from the subject (default false).",
    ),
];

pub fn parse_v1_segment(values: Vec<(String, String)>) -> Result<Edit, FieldError> {
    let p = Params::new(V1_SEGMENT, values);
    p.check_all()?;
    let max_pixels = match p.text("size")? {
        Some("preview") => 250_000,
        Some("medium") => 1_500_000,
        Some("hd") => 4_000_000,
        _ => 36_000_000,
    };
    let crop = p.bool("crop")?.unwrap_or(false);
    let edit = Edit {
        despill: p.bool("despill")?.unwrap_or(false),
        background: Background {
            fill: p.color("bg_color")?.map_or(Fill::Transparent, Fill::Color),
            blur: None,
        },
        layout: Layout::Frame(FrameLayout {
            crop: crop.then(|| Sides::all(super::Length::Pixels(0.0))),
            ..Default::default()
        }),
        max_pixels: Some(max_pixels),
        channels: if p.text("channels")? == Some("alpha") {
            Channels::Alpha
        } else {
            Channels::Rgba
        },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edit::{Color, Length};

    fn v2(pairs: &[(&str, &str)]) -> Result<Edit, FieldError> {
        parse_v2_edit(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn ecommerce_edit() {
        let edit = v2(&[
            ("imageUrl", "https://example.com/a.jpg"),
            ("background.color", "FFFFFF"),
            ("outputSize", "1000x1000"),
            ("padding", "0.1"),
            ("paddingTop", "20%"),
            ("shadow.mode", "ai.soft"),
        ])
        .unwrap();
        assert_eq!(edit.background.fill, Fill::Color(Color::WHITE));
        assert_eq!(edit.shadow.unwrap().mode, ShadowMode::Soft);
        let Layout::Canvas(layout) = edit.layout else {
            panic!()
        };
        assert_eq!(layout.output_size, OutputSize::Exact(1000, 1000));
        assert_eq!(layout.padding.left, Some(Length::Ratio(0.1)));
        assert_eq!(layout.padding.top, Some(Length::Ratio(0.2)));
    }

    #[test]
    fn errors_name_the_field() {
        let field = |pairs: &[(&str, &str)]| v2(pairs).unwrap_err().field;
        assert_eq!(
            field(&[("background.prompt", "a beach")]),
            "background.prompt"
        );
        assert_eq!(field(&[("beautify.mode", "ai.auto")]), "beautify.mode");
        assert_eq!(
            field(&[("background.blur.radius", "0.2")]),
            "background.blur.radius"
        );
        assert_eq!(
            field(&[("outline.width", "0.5"), ("outline.color", "red")]),
            "outline.width"
        );
        assert_eq!(field(&[("padding", "0.6")]), "padding");
        assert_eq!(field(&[("outputSize", "big")]), "outputSize");
        assert_eq!(field(&[("maxWidth", "100")]), "maxWidth");
        assert_eq!(field(&[("nonsense", "1")]), "nonsense");
        assert_eq!(
            field(&[
                ("removeBackground", "false"),
                ("background.imageUrl", "https://x/y.jpg")
            ]),
            "background.imageUrl"
        );
        assert_eq!(
            field(&[("background.scaling", "fit")]),
            "background.scaling"
        );
        assert_eq!(field(&[("export.dpi", "20")]), "export.dpi");
        assert_eq!(field(&[("shadow.mode", "ai.wobbly")]), "shadow.mode");
    }

    #[test]
    fn segment_sizes_and_crop() {
        let edit = parse_v1_segment(vec![
            ("size".into(), "preview".into()),
            ("crop".into(), "true".into()),
            ("channels".into(), "alpha".into()),
        ])
        .unwrap();
        assert_eq!(edit.max_pixels, Some(250_000));
        assert_eq!(edit.channels, Channels::Alpha);
        assert!(matches!(
            edit.layout,
            Layout::Frame(FrameLayout { crop: Some(_), .. })
        ));
        let err = parse_v1_segment(vec![("size".into(), "huge".into())]).unwrap_err();
        assert_eq!(err.field, "size");
    }
}
