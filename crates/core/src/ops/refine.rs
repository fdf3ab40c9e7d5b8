use super::{Filter, GpuImage, ImageOps, Kernel, Shader, compile_entries, grid};
use crate::error::Result;
use crate::gpu::Gpu;

/// How the guided filter fits the mask to the photo.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refinement {
    /// Longest side of the level the filter is fitted on (the photo is shrunk to it).
    pub level_side: u32,
    /// Window radius in level pixels.
    pub radius: u32,
    /// Regularisation: larger keeps the mask closer to the model's, smaller follows
    /// colour edges more tightly (colours in 0..1).
    pub eps: f32,
    /// Refined values within this of 0 or 1 become 0 or 1.
    pub snap: f32,
}

/// Chosen on the ground-truth composites of `tests/matting.rs` (see its notes): larger
/// windows or eps smooth detail away, a larger snap trades squared error for absolute.
impl Default for Refinement {
    fn default() -> Self {
        Self {
            level_side: 640,
            radius: 4,
            eps: 1e-5,
            snap: 0.03,
        }
    }
}

pub(super) struct Pipelines {
    moments: Kernel,
    box_horizontal: Kernel,
    box_vertical: Kernel,
    coefficients: Kernel,
    apply: Kernel,
}

impl Pipelines {
    pub fn new(gpu: &Gpu, shader: &Shader) -> Self {
        let [moments, box_horizontal, box_vertical, coefficients, apply] = compile_entries(
            gpu,
            shader,
            [
                "moments",
                "box_horizontal",
                "box_vertical",
                "coefficients",
                "apply",
            ],
        );
        Self {
            moments,
            box_horizontal,
            box_vertical,
            coefficients,
            apply,
        }
    }
}

uniform! {
    struct Params {
        level: [u32; 2],
        full: [u32; 2],
        radius: i32,
        eps: f32,
        vectors: u32,
        snap: f32,
    }
}

impl ImageOps {
    /// `shaders/refine.wgsl`: upsamples the model's coarse `mask` to `image`'s size with the
    /// photo as guide, so the mask's edges follow the photo's.
    pub fn refine_mask(
        &self,
        image: &GpuImage,
        mask: &GpuImage,
        refinement: Refinement,
    ) -> Result<GpuImage> {
        let (width, height) = (image.width, image.height);
        let factor = width.max(height).div_ceil(refinement.level_side).max(1);
        let level = [width.div_ceil(factor), height.div_ceil(factor)];
        let guide = self.resize(image, level[0], level[1], Filter::Lanczos3)?;
        let coarse = self.resize(mask, level[0], level[1], Filter::Lanczos3)?;
        let moment_bytes = level[0] as u64 * level[1] as u64 * 64;
        self.check_bytes(moment_bytes)?;
        let a = self.storage(moment_bytes, "refine level");
        let b = self.storage(moment_bytes, "refine level");
        let output = self.empty_image(width, height)?;
        let params = |vectors: u32| {
            self.uniform(&Params {
                level,
                full: [width, height],
                radius: refinement.radius as i32,
                eps: refinement.eps,
                vectors,
                snap: refinement.snap,
            })
        };
        let four = params(4);
        let one = params(1);
        let level_grid = grid(level[0], level[1]);
        let p = &self.refine;

        let mut encoder = self.encoder();
        self.dispatch(
            &mut encoder,
            &p.moments,
            &[
                ("params", &four),
                ("guide", &guide.buffer),
                ("mask", &coarse.buffer),
                ("dst", &a),
            ],
            level_grid,
        )?;
        self.box_filter(&mut encoder, &four, &a, &b, level_grid)?;
        self.dispatch(
            &mut encoder,
            &p.coefficients,
            &[("params", &four), ("src", &a), ("dst", &b)],
            level_grid,
        )?;
        self.box_filter(&mut encoder, &one, &b, &a, level_grid)?;
        self.dispatch(
            &mut encoder,
            &p.apply,
            &[
                ("params", &one),
                ("guide", &image.buffer),
                ("src", &b),
                ("refined", &output.buffer),
            ],
            grid(width, height),
        )?;
        self.submit(encoder);
        Ok(output)
    }

    /// Replaces `values` by their window means; `scratch` holds the horizontal pass.
    fn box_filter(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        params: &wgpu::Buffer,
        values: &wgpu::Buffer,
        scratch: &wgpu::Buffer,
        level_grid: [u32; 3],
    ) -> Result<()> {
        let p = &self.refine;
        self.dispatch(
            encoder,
            &p.box_horizontal,
            &[("params", params), ("src", values), ("dst", scratch)],
            level_grid,
        )?;
        self.dispatch(
            encoder,
            &p.box_vertical,
            &[("params", params), ("src", scratch), ("dst", values)],
            level_grid,
        )
    }
}
