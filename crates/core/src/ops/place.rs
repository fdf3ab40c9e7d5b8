use super::{Filter, GpuImage, ImageOps, grid};
use crate::error::Result;

/// Where an image lands on a canvas: `canvas = offset + source * scale`, with only the
/// region of interest (source pixels `x0, y0, x1, y1`) allowed to be foreground.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlaceMap {
    pub canvas: [u32; 2],
    pub scale: f32,
    pub offset: [f32; 2],
    pub roi: [f32; 4],
}

impl PlaceMap {
    /// For a reduction, the size to shrink a `width × height` source to first (with the
    /// antialiased Lanczos resize, so large reductions do not alias) and the map that places
    /// the shrunk source where this one places the original; `None` when no shrink is due.
    pub(super) fn shrink(self, width: u32, height: u32) -> Option<([u32; 2], PlaceMap)> {
        if self.scale >= 0.999 {
            return None;
        }
        let shrunk = [
            ((width as f32 * self.scale).round() as u32).max(1),
            ((height as f32 * self.scale).round() as u32).max(1),
        ];
        let (sx, sy) = (
            shrunk[0] as f32 / width as f32,
            shrunk[1] as f32 / height as f32,
        );
        let map = PlaceMap {
            scale: self.scale / sx,
            roi: [
                self.roi[0] * sx,
                self.roi[1] * sy,
                self.roi[2] * sx,
                self.roi[3] * sy,
            ],
            ..self
        };
        Some((shrunk, map))
    }
}

uniform! {
    struct Params {
        src_size: [u32; 2],
        dst_size: [u32; 2],
        offset: [f32; 2],
        scale: f32,
        opaque: u32,
        roi: [f32; 4],
    }
}

impl ImageOps {
    /// `shaders/place.wgsl`: draws `image` and its `mask` (or full opacity) onto a canvas,
    /// returning the canvas colour (alpha: frame coverage) and the canvas mask. Shrinking
    /// goes through the antialiased Lanczos resize first, so large reductions do not alias.
    pub fn place(
        &self,
        image: &GpuImage,
        mask: Option<&GpuImage>,
        map: PlaceMap,
    ) -> Result<(GpuImage, GpuImage)> {
        let shrunk;
        let shrunk_mask;
        let (mut source, mut source_mask, mut map) = (image, mask, map);
        if let Some(([width, height], shrunk_map)) = map.shrink(image.width, image.height) {
            shrunk = self.resize(image, width, height, Filter::Lanczos3)?;
            source = &shrunk;
            if let Some(mask) = mask {
                shrunk_mask = self.resize(mask, width, height, Filter::Lanczos3)?;
                source_mask = Some(&shrunk_mask);
            }
            map = shrunk_map;
        }
        let [width, height] = map.canvas;
        let colour = self.empty_image(width, height)?;
        let canvas_mask = self.empty_image(width, height)?;
        let params = self.uniform(&Params {
            src_size: [source.width, source.height],
            dst_size: map.canvas,
            offset: map.offset,
            scale: map.scale,
            opaque: source_mask.is_none() as u32,
            roi: map.roi,
        });
        let mask_buffer = source_mask.map_or(&source.buffer, |m| &m.buffer);
        let mut encoder = self.encoder();
        self.dispatch(
            &mut encoder,
            &self.place,
            &[
                ("params", &params),
                ("src", &source.buffer),
                ("src_mask", mask_buffer),
                ("dst", &colour.buffer),
                ("dst_mask", &canvas_mask.buffer),
            ],
            grid(width, height),
        )?;
        self.submit(encoder);
        Ok((colour, canvas_mask))
    }
}
