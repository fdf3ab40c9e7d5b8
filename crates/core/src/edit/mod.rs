//! One description of an edit, whatever API or command line asked for it. The dialects
//! (`photoroom`, `removebg`) parse their parameters into an [`Edit`]; the pipeline
//! ([`Editor`]) runs it.

pub mod color;
pub mod geometry;
pub mod params;
pub mod photoroom;
mod pipeline;
pub mod removebg;
pub mod simple;

pub use color::Color;
pub use geometry::{Length, Placement, Rect, Sides};
pub use pipeline::{EditOutput, Editor, Job, Segmented};

/// What to do with one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Edit {
    /// Segment the subject and drop the rest; when false the whole frame is the subject.
    pub remove_background: bool,
    /// Use the input's own alpha channel as the mask when it has transparency.
    pub keep_existing_alpha: bool,
    /// Only pixels inside this region (of the input) can be foreground (remove.bg `roi`).
    pub region_of_interest: Option<[Length; 4]>,
    /// Refine the mask's edges with the photo as guide (a guided filter); without it the
    /// model's mask is upsampled as rembg does.
    pub refine: bool,
    /// Remove colour spill of the old background from the subject's edges.
    pub despill: bool,
    pub background: Background,
    pub outline: Option<Outline>,
    pub shadow: Option<Shadow>,
    pub layout: Layout,
    /// Downscale the result to at most this many pixels (size presets); never upscales.
    pub max_pixels: Option<u64>,
    /// Downscale the result so its longer side is at most this; never upscales.
    pub max_side: Option<u32>,
    pub channels: Channels,
    pub format: Format,
    pub dpi: Option<u32>,
    /// Draw a visible watermark (sandbox keys).
    pub watermark: bool,
}

impl Default for Edit {
    fn default() -> Self {
        Self {
            remove_background: true,
            keep_existing_alpha: false,
            region_of_interest: None,
            refine: true,
            despill: false,
            background: Background::default(),
            outline: None,
            shadow: None,
            layout: Layout::Frame(FrameLayout::default()),
            max_pixels: None,
            max_side: None,
            channels: Channels::Rgba,
            format: Format::Png,
            dpi: None,
            watermark: false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Background {
    pub fill: Fill,
    /// Keep the original background behind the subject, blurred.
    pub blur: Option<Blur>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Fill {
    #[default]
    Transparent,
    Color(Color),
    /// A background image, supplied with the job, placed with this scaling.
    Image(Scaling),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Blur {
    pub mode: BlurMode,
    /// Ratio of the larger canvas side, 0..=0.05.
    pub radius: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlurMode {
    Gaussian,
    Bokeh,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outline {
    pub color: Color,
    /// Ratio of the larger canvas side, 0..=0.1.
    pub width: f32,
    /// Ratio of the larger canvas side, 0..=0.025.
    pub blur_radius: f32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shadow {
    pub mode: ShadowMode,
    /// 0..=1, multiplies the mode's own strength.
    pub opacity: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowMode {
    /// A soft contact shadow under the subject plus a faint drop shadow.
    Soft,
    /// A sharp shadow cast onto the ground behind the subject.
    Hard,
    /// The subject lifted off the ground, with a blurred shadow below it.
    Floating,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scaling {
    #[default]
    Fit,
    Fill,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Start,
    Center,
    End,
}

/// Where the subject lands and how big the result is.
#[derive(Debug, Clone, PartialEq)]
pub enum Layout {
    /// PhotoRoom v2 positioning: a canvas, margins, padding, scaling and alignment.
    Canvas(CanvasLayout),
    /// The input frame, optionally cropped to the subject (remove.bg and `/v1/segment`).
    Frame(FrameLayout),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputSize {
    /// Without templates, the same as `OriginalImage`.
    Auto,
    OriginalImage,
    CroppedSubject,
    Exact(u32, u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceBox {
    SubjectBox,
    OriginalImage,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CanvasLayout {
    pub output_size: OutputSize,
    pub max_width: Option<u32>,
    pub max_height: Option<u32>,
    pub margin: Sides<Option<Length>>,
    pub padding: Sides<Option<Length>>,
    pub scaling: Scaling,
    pub horizontal: Option<Align>,
    pub vertical: Option<Align>,
    pub reference_box: ReferenceBox,
    pub snap_cropped_sides: bool,
}

impl Default for CanvasLayout {
    fn default() -> Self {
        Self {
            output_size: OutputSize::Auto,
            max_width: None,
            max_height: None,
            margin: Sides::all(None),
            padding: Sides::all(None),
            scaling: Scaling::Fit,
            horizontal: None,
            vertical: None,
            reference_box: ReferenceBox::SubjectBox,
            snap_cropped_sides: true,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrameLayout {
    /// Crop the canvas to the subject box plus this margin (`%` of the subject size).
    pub crop: Option<Sides<Length>>,
    /// Fit the subject box into this share (0.1..=1) of the canvas.
    pub scale: Option<f32>,
    /// Where the subject box sits, as CSS `background-position` shares of the free space.
    pub position: Option<[f32; 2]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    Rgba,
    /// Opaque: flattened onto the background colour, or white.
    Rgb,
    /// The matte alone, as a grey image.
    Alpha,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    Jpeg,
    WebP,
    /// PNG when the result has transparency, JPEG otherwise (remove.bg `auto`).
    Auto,
    /// remove.bg's ZIP: `color.jpg` (opaque colours) plus `alpha.png` (the matte).
    Zip,
}

/// A parameter that failed validation, named as the request spelled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

/// The largest result canvas a request may ask for: 36 MP, PhotoRoom's largest size preset
/// (`size=full`), and a side the device can address in one dispatch.
pub const MAX_CANVAS_PIXELS: u64 = 36_000_000;
pub const MAX_CANVAS_SIDE: u32 = 65_535;

impl Edit {
    /// Checks ranges and combinations; the error names the PhotoRoom v2 field.
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(blur) = self.background.blur
            && !(0.0..=0.05).contains(&blur.radius)
        {
            return Err(FieldError::new(
                "background.blur.radius",
                "must be between 0 and 0.05",
            ));
        }
        if let Some(outline) = self.outline {
            if !(0.0..=0.1).contains(&outline.width) {
                return Err(FieldError::new(
                    "outline.width",
                    "must be between 0 and 0.1",
                ));
            }
            if !(0.0..=0.025).contains(&outline.blur_radius) {
                return Err(FieldError::new(
                    "outline.blurRadius",
                    "must be between 0 and 0.025",
                ));
            }
        }
        if let Some(dpi) = self.dpi
            && !(72..=1200).contains(&dpi)
        {
            return Err(FieldError::new("export.dpi", "must be between 72 and 1200"));
        }
        if let Layout::Canvas(canvas) = &self.layout {
            for (side, margin) in canvas.margin.named("margin") {
                check_spacing(&side, margin)?;
            }
            for (side, padding) in canvas.padding.named("padding") {
                check_spacing(&side, padding)?;
            }
            if let OutputSize::Exact(w, h) = canvas.output_size {
                if w == 0 || h == 0 {
                    return Err(FieldError::new(
                        "outputSize",
                        "width and height must be > 0",
                    ));
                }
                if w > MAX_CANVAS_SIDE
                    || h > MAX_CANVAS_SIDE
                    || w as u64 * h as u64 > MAX_CANVAS_PIXELS
                {
                    return Err(FieldError::new(
                        "outputSize",
                        format!(
                            "{w}x{h} is larger than the largest output: {MAX_CANVAS_PIXELS} pixels, {MAX_CANVAS_SIDE} on a side"
                        ),
                    ));
                }
            }
            let capped = canvas.max_width.is_some() || canvas.max_height.is_some();
            if capped
                && !matches!(
                    canvas.output_size,
                    OutputSize::OriginalImage | OutputSize::CroppedSubject
                )
            {
                return Err(FieldError::new(
                    if canvas.max_width.is_some() {
                        "maxWidth"
                    } else {
                        "maxHeight"
                    },
                    "can only be provided if outputSize is originalImage or croppedSubject",
                ));
            }
            if canvas.max_width == Some(0) || canvas.max_height == Some(0) {
                return Err(FieldError::new("maxWidth", "must be > 0"));
            }
        }
        if let Layout::Frame(frame) = &self.layout {
            if let Some(scale) = frame.scale
                && !(0.1..=1.0).contains(&scale)
            {
                return Err(FieldError::new("scale", "must be between 10% and 100%"));
            }
            if let Some([h, v]) = frame.position
                && !((0.0..=1.0).contains(&h) && (0.0..=1.0).contains(&v))
            {
                return Err(FieldError::new("position", "must be between 0% and 100%"));
            }
        }
        if self.max_pixels == Some(0) {
            return Err(FieldError::new("size", "must allow at least one pixel"));
        }
        Ok(())
    }

    /// Where the subject (`subject`, its box in `image`; `None` when the mask is empty)
    /// lands, and the canvas, after the size limits.
    pub fn placement(
        &self,
        image: [u32; 2],
        subject: Option<Rect>,
    ) -> Result<Placement, FieldError> {
        let mut placement = geometry::place(&self.layout, image, subject)?;
        if let Some(max) = self.max_pixels {
            placement = placement.within_pixels(max);
        }
        if let Some(max) = self.max_side {
            placement = placement.within_side(max);
        }
        Ok(placement)
    }

    /// At most how many pixels the canvas of an `image`-sized input can have beyond the
    /// input's own, whatever the subject turns out to be, so a request can be charged for
    /// its memory before it is segmented: a canvas the request names outright
    /// (`outputSize=WxH`, which a small input can ask for) in full, or what remove.bg's
    /// `crop_margin` can add around the subject (up to half the subject or 500 px a side);
    /// both within the size limits. 0 when the canvas is the input's frame or smaller.
    pub fn canvas_pixels_beyond_input(&self, image: [u32; 2]) -> u64 {
        let input = image[0] as u64 * image[1] as u64;
        let canvas = match &self.layout {
            Layout::Canvas(CanvasLayout {
                output_size: OutputSize::Exact(w, h),
                ..
            }) => return self.within_limits(*w as u64 * *h as u64),
            Layout::Frame(FrameLayout { crop: Some(_), .. }) => {
                // `place_in_frame`: the subject box (at most the frame, rounded out) plus
                // each margin (at most half of it or 500 px), rounded.
                let side = |s: u32| {
                    let s = s as u64;
                    s + 2 * (s / 2 + 1).max(geometry::CROP_MARGIN_FLOOR as u64) + 1
                };
                side(image[0]) * side(image[1])
            }
            _ => return 0,
        };
        self.within_limits(canvas).saturating_sub(input)
    }

    /// `pixels` as the size limits leave it at most.
    fn within_limits(&self, pixels: u64) -> u64 {
        let by_pixels = self.max_pixels.map_or(pixels, |max| pixels.min(max));
        // A canvas whose longer side is at most `max` has at most max² pixels.
        self.max_side
            .map_or(by_pixels, |max| by_pixels.min(max as u64 * max as u64))
    }

    /// Whether the result can have transparent pixels (decides remove.bg's `format=auto`).
    pub fn may_be_transparent(&self) -> bool {
        match self.background.fill {
            Fill::Color(color) => !color.is_opaque(),
            Fill::Transparent | Fill::Image(_) => {
                self.remove_background || self.background.blur.is_some()
            }
        }
    }
}

fn check_spacing(field: &str, value: Option<Length>) -> Result<(), FieldError> {
    match value {
        Some(Length::Ratio(r)) if !(0.0..=0.49).contains(&r) => Err(FieldError::new(
            field,
            "must be a ratio between 0 and 0.49, a percentage between 0% and 49%, or pixels like 100px",
        )),
        Some(Length::Pixels(p)) if p < 0.0 => {
            Err(FieldError::new(field, "pixels must not be negative"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memory charge's canvas bound holds for every subject the mask could give: the
    /// canvas `placement` computes (what the pipeline renders) never exceeds the input plus
    /// `canvas_pixels_beyond_input`, over subjects from one pixel to the whole frame,
    /// margins in pixels and percent past their caps, and the size limits.
    #[test]
    fn the_canvas_never_outgrows_its_charged_bound() {
        let margins = [
            Sides::all(Length::Pixels(0.0)),
            Sides::all(Length::Pixels(499.0)),
            Sides::all(Length::Pixels(100_000.0)),
            Sides::all(Length::Ratio(0.5)),
            Sides::all(Length::Ratio(4.0)),
            Sides {
                top: Length::Ratio(1.0),
                right: Length::Pixels(30.0),
                bottom: Length::Pixels(900.0),
                left: Length::Ratio(0.1),
            },
        ];
        let layouts = margins
            .iter()
            .map(|margin| {
                Layout::Frame(FrameLayout {
                    crop: Some(*margin),
                    ..FrameLayout::default()
                })
            })
            .chain([
                Layout::Frame(FrameLayout::default()),
                Layout::Canvas(CanvasLayout::default()),
                Layout::Canvas(CanvasLayout {
                    output_size: OutputSize::Exact(4000, 3000),
                    ..CanvasLayout::default()
                }),
            ]);
        let limits = [
            (None, None),
            (Some(25_000_000), None),
            (Some(250_000), None),
            (None, Some(500)),
        ];
        let mut largest_share = 0.0f64;
        for layout in layouts {
            for (max_pixels, max_side) in limits {
                let edit = Edit {
                    layout: layout.clone(),
                    max_pixels,
                    max_side,
                    ..Edit::default()
                };
                for image in [[1, 1], [37, 5], [640, 480], [1200, 3000], [6000, 4000]] {
                    let bound =
                        image[0] as u64 * image[1] as u64 + edit.canvas_pixels_beyond_input(image);
                    let [w, h] = image.map(|v| v as f64);
                    let subjects = [
                        None,
                        Some(Rect::new(0.0, 0.0, w, h)),
                        Some(Rect::new(0.4, 0.6, 1.3, 1.5)),
                        Some(Rect::new(w * 0.25, h * 0.1, w * 0.75 + 0.5, h * 0.9)),
                        Some(Rect::new(w * 0.5, 0.0, w, h * 0.01 + 0.2)),
                    ];
                    for subject in subjects {
                        let [cw, ch] = edit.placement(image, subject).unwrap().canvas;
                        let canvas = cw as u64 * ch as u64;
                        assert!(
                            canvas <= bound,
                            "{layout:?}, limits {max_pixels:?}/{max_side:?}, image {image:?}, subject {subject:?}: canvas {cw}x{ch} = {canvas} > {bound}"
                        );
                        largest_share = largest_share.max(canvas as f64 / bound as f64);
                    }
                }
            }
        }
        // The bound is reached or nearly (a loose one would charge memory never used).
        assert!(largest_share > 0.99, "largest canvas/bound {largest_share}");
    }
}
