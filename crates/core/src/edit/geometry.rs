//! Where the subject lands on the canvas, computed on the CPU. Follows
//! `docs/positioning.md` step by step; the shaders only apply the result.

use super::{
    Align, CanvasLayout, FieldError, FrameLayout, Layout, OutputSize, ReferenceBox, Scaling,
};

/// A length as the APIs give it: a ratio (percentages are parsed to ratios) or pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Length {
    Ratio(f32),
    Pixels(f32),
}

impl Length {
    fn resolve(self, of: f64) -> f64 {
        match self {
            Length::Ratio(r) => r as f64 * of,
            Length::Pixels(p) => p as f64,
        }
    }
}

/// Per-side values in CSS order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sides<T> {
    pub top: T,
    pub right: T,
    pub bottom: T,
    pub left: T,
}

impl<T: Copy> Sides<T> {
    pub fn all(value: T) -> Self {
        Self {
            top: value,
            right: value,
            bottom: value,
            left: value,
        }
    }

    /// The sides with their field names (`paddingTop`, …).
    pub fn named(&self, base: &str) -> [(String, T); 4] {
        [
            (format!("{base}Top"), self.top),
            (format!("{base}Right"), self.right),
            (format!("{base}Bottom"), self.bottom),
            (format!("{base}Left"), self.left),
        ]
    }
}

/// An axis-aligned box in pixels: `[x0, x1) × [y0, y1)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    pub x0: f64,
    pub y0: f64,
    pub x1: f64,
    pub y1: f64,
}

impl Rect {
    pub fn new(x0: f64, y0: f64, x1: f64, y1: f64) -> Self {
        Self { x0, y0, x1, y1 }
    }

    pub fn width(&self) -> f64 {
        self.x1 - self.x0
    }

    pub fn height(&self) -> f64 {
        self.y1 - self.y0
    }
}

/// The canvas size and the map from input pixels to canvas pixels:
/// `canvas = offset + input * scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub canvas: [u32; 2],
    pub scale: f64,
    pub offset: [f64; 2],
}

impl Placement {
    /// Where `rect` (input pixels) lands on the canvas.
    pub fn map(&self, rect: Rect) -> Rect {
        Rect::new(
            self.offset[0] + rect.x0 * self.scale,
            self.offset[1] + rect.y0 * self.scale,
            self.offset[0] + rect.x1 * self.scale,
            self.offset[1] + rect.y1 * self.scale,
        )
    }

    /// Shrinks canvas and content together to at most `max_pixels` (never enlarges).
    pub fn within_pixels(self, max_pixels: u64) -> Self {
        let [w, h] = self.canvas;
        let pixels = w as f64 * h as f64;
        if pixels <= max_pixels as f64 {
            return self;
        }
        // Rounded down, so the sides' rounding cannot take the canvas past `max_pixels`.
        self.scaled((max_pixels as f64 / pixels).sqrt(), f64::floor)
    }

    /// Shrinks canvas and content together so the longer side is at most `max_side`.
    pub fn within_side(self, max_side: u32) -> Self {
        let longer = self.canvas[0].max(self.canvas[1]);
        if longer <= max_side {
            return self;
        }
        self.scaled(max_side as f64 / longer as f64, f64::round)
    }

    /// Canvas and content scaled by `c`, the canvas's sides rounded with `round`.
    fn scaled(self, c: f64, round: fn(f64) -> f64) -> Self {
        let [w, h] = self.canvas;
        let canvas = [w, h].map(|side| round_size(round(side as f64 * c)));
        // Scale by the rounded size so the content fills the canvas exactly as before.
        let cx = canvas[0] as f64 / w as f64;
        let cy = canvas[1] as f64 / h as f64;
        let c = cx.min(cy);
        Self {
            canvas,
            scale: self.scale * c,
            offset: [self.offset[0] * cx, self.offset[1] * cy],
        }
    }
}

fn round_size(v: f64) -> u32 {
    (v.round() as u32).max(1)
}

/// A subject box touching the frame within this many pixels counts as cropped there.
const CROPPED_TOLERANCE: f64 = 2.0;

/// Places the input (`image` pixels, `subject` its tight foreground box, `None` when the
/// mask is empty) according to `layout`.
pub fn place(
    layout: &Layout,
    image: [u32; 2],
    subject: Option<Rect>,
) -> Result<Placement, FieldError> {
    let frame = Rect::new(0.0, 0.0, image[0] as f64, image[1] as f64);
    let subject = subject.unwrap_or(frame);
    match layout {
        Layout::Canvas(canvas) => place_on_canvas(canvas, frame, subject),
        Layout::Frame(frame_layout) => Ok(place_in_frame(frame_layout, frame, subject)),
    }
}

fn place_on_canvas(
    layout: &CanvasLayout,
    frame: Rect,
    subject: Rect,
) -> Result<Placement, FieldError> {
    // Step 1: canvas size.
    let (mut w, mut h) = match layout.output_size {
        OutputSize::Exact(w, h) => (w as f64, h as f64),
        OutputSize::Auto | OutputSize::OriginalImage => (frame.width(), frame.height()),
        OutputSize::CroppedSubject => (subject.width().round(), subject.height().round()),
    };
    let mut c: f64 = 1.0;
    if let Some(max) = layout.max_width {
        c = c.min(max as f64 / w);
    }
    if let Some(max) = layout.max_height {
        c = c.min(max as f64 / h);
    }
    w = round_size(w * c) as f64;
    h = round_size(h * c) as f64;

    // Steps 2 and 3: margins against the canvas, padding against the margin box.
    let side = |s: &super::Sides<Option<Length>>, horizontal: [bool; 4], of: [f64; 2]| {
        let values = [s.top, s.right, s.bottom, s.left];
        let mut out = [0.0; 4];
        for i in 0..4 {
            let along = if horizontal[i] { of[0] } else { of[1] };
            out[i] = values[i].map_or(0.0, |v| v.resolve(along));
        }
        out
    };
    const HORIZONTAL: [bool; 4] = [false, true, false, true];
    let [m_top, m_right, m_bottom, m_left] = side(&layout.margin, HORIZONTAL, [w, h]);
    let wm = w - m_left - m_right;
    let hm = h - m_top - m_bottom;
    let [mut p_top, mut p_right, mut p_bottom, mut p_left] =
        side(&layout.padding, HORIZONTAL, [wm, hm]);

    // Step 4: the reference box.
    let reference = match layout.reference_box {
        ReferenceBox::SubjectBox => subject,
        ReferenceBox::OriginalImage => frame,
    };

    // Step 5: cropped sides drop their padding where snapping is active.
    let snapping = layout.snap_cropped_sides && layout.reference_box == ReferenceBox::SubjectBox;
    let snap_x = snapping && layout.horizontal.is_none();
    let snap_y = snapping && layout.vertical.is_none();
    let cropped_left = snap_x && subject.x0 <= frame.x0 + CROPPED_TOLERANCE;
    let cropped_right = snap_x && subject.x1 >= frame.x1 - CROPPED_TOLERANCE;
    let cropped_top = snap_y && subject.y0 <= frame.y0 + CROPPED_TOLERANCE;
    let cropped_bottom = snap_y && subject.y1 >= frame.y1 - CROPPED_TOLERANCE;
    if cropped_left {
        p_left = 0.0;
    }
    if cropped_right {
        p_right = 0.0;
    }
    if cropped_top {
        p_top = 0.0;
    }
    if cropped_bottom {
        p_bottom = 0.0;
    }

    // Step 6: the target area.
    let tx = m_left + p_left;
    let ty = m_top + p_top;
    let tw = wm - p_left - p_right;
    let th = hm - p_top - p_bottom;
    if tw <= 0.0 || th <= 0.0 {
        return Err(FieldError::new(
            "padding",
            "margins and padding leave no room for the subject",
        ));
    }

    // Step 7: scale.
    let (kx, ky) = (tw / reference.width(), th / reference.height());
    let k = match layout.scaling {
        Scaling::Fit => kx.min(ky),
        Scaling::Fill => kx.max(ky),
    };
    let (rw, rh) = (reference.width() * k, reference.height() * k);

    // Step 8: alignment.
    let factor = |explicit: Option<Align>, start_cropped: bool, end_cropped: bool| match explicit {
        Some(Align::Start) => 0.0,
        Some(Align::Center) => 0.5,
        Some(Align::End) => 1.0,
        None if start_cropped && !end_cropped => 0.0,
        None if end_cropped && !start_cropped => 1.0,
        None => 0.5,
    };
    let fx = factor(layout.horizontal, cropped_left, cropped_right);
    let fy = factor(layout.vertical, cropped_top, cropped_bottom);

    // Step 9: place.
    let x0 = tx + fx * (tw - rw);
    let y0 = ty + fy * (th - rh);
    Ok(Placement {
        canvas: [w as u32, h as u32],
        scale: k,
        offset: [x0 - reference.x0 * k, y0 - reference.y0 * k],
    })
}

/// A `crop_margin` side may be up to half the subject's size or this many pixels, whichever
/// is more (remove.bg's limit).
pub(crate) const CROP_MARGIN_FLOOR: f64 = 500.0;

/// remove.bg's rules: the input frame, or the subject box plus `crop_margin`; `scale` fits
/// the subject into a share of the canvas and `position` places it like CSS
/// `background-position`.
fn place_in_frame(layout: &FrameLayout, frame: Rect, subject: Rect) -> Placement {
    if let Some(margin) = &layout.crop {
        let cap = |share: f64| (0.5 * share).max(CROP_MARGIN_FLOOR);
        let side = |length: Length, of: f64| length.resolve(of).clamp(0.0, cap(of));
        let top = side(margin.top, subject.height());
        let bottom = side(margin.bottom, subject.height());
        let left = side(margin.left, subject.width());
        let right = side(margin.right, subject.width());
        let x0 = subject.x0.floor();
        let y0 = subject.y0.floor();
        let w = subject.x1.ceil() - x0 + left + right;
        let h = subject.y1.ceil() - y0 + top + bottom;
        return Placement {
            canvas: [round_size(w), round_size(h)],
            scale: 1.0,
            offset: [(left - x0).round(), (top - y0).round()],
        };
    }
    let (w, h) = (frame.width(), frame.height());
    let k = layout.scale.map_or(1.0, |s| {
        let s = s as f64;
        (s * w / subject.width()).min(s * h / subject.height())
    });
    let position = layout.position.or(layout.scale.map(|_| [0.5, 0.5]));
    let offset = match position {
        None => [0.0, 0.0],
        Some([ph, pv]) => {
            let x = ph as f64 * (w - subject.width() * k);
            let y = pv as f64 * (h - subject.height() * k);
            [x - subject.x0 * k, y - subject.y0 * k]
        }
    };
    Placement {
        canvas: [w as u32, h as u32],
        scale: k,
        offset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edit::Sides;

    fn canvas(size: (u32, u32)) -> CanvasLayout {
        CanvasLayout {
            output_size: OutputSize::Exact(size.0, size.1),
            ..Default::default()
        }
    }

    fn subject_on_canvas(
        layout: CanvasLayout,
        image: [u32; 2],
        subject: Rect,
    ) -> (Placement, Rect) {
        let placement = place(&Layout::Canvas(layout), image, Some(subject)).unwrap();
        (placement, placement.map(subject))
    }

    fn close(actual: Rect, expected: [f64; 4]) {
        let got = [actual.x0, actual.y0, actual.x1, actual.y1];
        for (a, e) in got.iter().zip(expected) {
            assert!((a - e).abs() < 0.1, "got {got:?}, expected {expected:?}");
        }
    }

    #[test]
    fn example_a_uniform_padding() {
        let mut layout = canvas((1000, 1000));
        layout.padding = Sides::all(Some(Length::Ratio(0.1)));
        let (p, s) = subject_on_canvas(layout, [1200, 800], Rect::new(400.0, 100.0, 800.0, 700.0));
        assert_eq!(p.canvas, [1000, 1000]);
        close(s, [233.3, 100.0, 766.7, 900.0]);
    }

    #[test]
    fn example_b_per_side_override() {
        let mut layout = canvas((1000, 1500));
        layout.padding = Sides::all(Some(Length::Ratio(0.1)));
        layout.padding.top = Some(Length::Ratio(0.2));
        let (_, s) = subject_on_canvas(layout, [2000, 2000], Rect::new(100.0, 100.0, 600.0, 600.0));
        close(s, [100.0, 425.0, 900.0, 1225.0]);
    }

    #[test]
    fn example_c_margin_plus_padding() {
        let mut layout = canvas((1000, 1000));
        layout.margin = Sides::all(Some(Length::Ratio(0.05)));
        layout.padding = Sides::all(Some(Length::Ratio(0.1)));
        let (_, s) =
            subject_on_canvas(layout, [2000, 2000], Rect::new(500.0, 500.0, 800.0, 1100.0));
        close(s, [320.0, 140.0, 680.0, 860.0]);
    }

    #[test]
    fn example_d_cropped_bottom_snaps() {
        let subject = Rect::new(100.0, 400.0, 1500.0, 1000.0);
        let mut layout = canvas((1000, 1000));
        layout.margin = Sides::all(Some(Length::Ratio(0.05)));
        layout.padding = Sides::all(Some(Length::Ratio(0.1)));
        let (_, s) = subject_on_canvas(layout.clone(), [1600, 1000], subject);
        close(s, [140.0, 641.4, 860.0, 950.0]);

        let mut no_snap = layout.clone();
        no_snap.snap_cropped_sides = false;
        let (_, s) = subject_on_canvas(no_snap, [1600, 1000], subject);
        close(s, [140.0, 345.7, 860.0, 654.3]);

        let mut centred = layout.clone();
        centred.vertical = Some(Align::Center);
        let (_, s) = subject_on_canvas(centred, [1600, 1000], subject);
        close(s, [140.0, 345.7, 860.0, 654.3]);

        let mut bottom = layout;
        bottom.vertical = Some(Align::End);
        let (_, s) = subject_on_canvas(bottom, [1600, 1000], subject);
        assert!((s.y1 - 860.0).abs() < 0.1);
    }

    #[test]
    fn example_e_reference_box_original_image() {
        let subject = Rect::new(20.0, 300.0, 320.0, 800.0);
        let mut layout = canvas((1000, 1000));
        layout.reference_box = ReferenceBox::OriginalImage;
        let (_, s) = subject_on_canvas(layout.clone(), [1600, 900], subject);
        close(s, [12.5, 406.25, 200.0, 718.75]);

        layout.scaling = Scaling::Fill;
        let (p, s) = subject_on_canvas(layout, [1600, 900], subject);
        assert!((p.offset[0] - -388.9).abs() < 0.1);
        assert!((s.x0 - -366.7).abs() < 0.1 && (s.x1 - -33.3).abs() < 0.1);
    }

    #[test]
    fn example_f_capped_output_sizes() {
        let subject = Rect::new(1500.0, 500.0, 2500.0, 2500.0);
        let mut layout = CanvasLayout {
            output_size: OutputSize::OriginalImage,
            max_width: Some(1000),
            ..Default::default()
        };
        let (p, s) = subject_on_canvas(layout.clone(), [4000, 3000], subject);
        assert_eq!(p.canvas, [1000, 750]);
        close(s, [312.5, 0.0, 687.5, 750.0]);

        layout.output_size = OutputSize::CroppedSubject;
        layout.max_width = None;
        layout.max_height = Some(500);
        let (p, s) = subject_on_canvas(layout, [4000, 3000], subject);
        assert_eq!(p.canvas, [250, 500]);
        assert!((p.scale - 0.25).abs() < 1e-9);
        close(s, [0.0, 0.0, 250.0, 500.0]);
    }

    #[test]
    fn padding_that_leaves_no_room_is_rejected() {
        let mut layout = canvas((100, 100));
        layout.padding = Sides::all(Some(Length::Pixels(60.0)));
        let subject = Rect::new(10.0, 10.0, 40.0, 40.0);
        let err = place(&Layout::Canvas(layout), [50, 50], Some(subject)).unwrap_err();
        assert_eq!(err.field, "padding");
    }

    #[test]
    fn removebg_crop_with_margin() {
        let layout = FrameLayout {
            crop: Some(Sides {
                top: Length::Pixels(10.0),
                right: Length::Ratio(0.1),
                bottom: Length::Pixels(10.0),
                left: Length::Ratio(0.1),
            }),
            ..Default::default()
        };
        let subject = Rect::new(100.0, 50.0, 300.0, 150.0);
        let p = place(&Layout::Frame(layout), [400, 300], Some(subject)).unwrap();
        assert_eq!(p.canvas, [240, 120]);
        close(p.map(subject), [20.0, 10.0, 220.0, 110.0]);
    }

    #[test]
    fn removebg_scale_centres_by_default() {
        let layout = FrameLayout {
            scale: Some(0.5),
            ..Default::default()
        };
        let subject = Rect::new(0.0, 0.0, 100.0, 200.0);
        let p = place(&Layout::Frame(layout.clone()), [400, 400], Some(subject)).unwrap();
        close(p.map(subject), [150.0, 100.0, 250.0, 300.0]);

        let positioned = FrameLayout {
            position: Some([0.0, 1.0]),
            ..layout
        };
        let p = place(&Layout::Frame(positioned), [400, 400], Some(subject)).unwrap();
        close(p.map(subject), [0.0, 200.0, 100.0, 400.0]);
    }

    #[test]
    fn pixel_budget_shrinks_but_never_enlarges() {
        let p = Placement {
            canvas: [2000, 1000],
            scale: 1.0,
            offset: [0.0, 0.0],
        };
        assert_eq!(p.within_pixels(10_000_000), p);
        let small = p.within_pixels(250_000);
        // "Up to 0.25 megapixels": 707×354 would be 250,278.
        assert_eq!(small.canvas, [707, 353]);
        assert!(small.scale < 0.36 && small.scale > 0.35);
    }
}
