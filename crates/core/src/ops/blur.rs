use super::{GpuImage, ImageOps, Kernel, Shader, compile_entries, grid};
use crate::error::Result;
use crate::gpu::Gpu;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlurKind {
    /// Separable gaussian; the radius is its sigma.
    Gaussian,
    /// Disc kernel with highlight bloom; the radius is the disc's.
    Bokeh,
}

/// Above this radius (in pixels of the level blurred) the blur runs on a downsampled level.
const LEVEL_RADIUS: f32 = 8.0;

pub(super) struct Pipelines {
    weigh: Kernel,
    horizontal: Kernel,
    vertical: Kernel,
    disc: Kernel,
    resolve: Kernel,
}

impl Pipelines {
    pub fn new(gpu: &Gpu, shader: &Shader) -> Self {
        let [weigh, horizontal, vertical, disc, resolve] = compile_entries(
            gpu,
            shader,
            ["weigh", "horizontal", "vertical", "disc", "resolve"],
        );
        Self {
            weigh,
            horizontal,
            vertical,
            disc,
            resolve,
        }
    }
}

uniform! {
    struct Params {
        size: [u32; 2],
        full_size: [u32; 2],
        radius: f32,
        factor: u32,
        mode: u32,
        bloom: f32,
    }
}

impl ImageOps {
    /// `shaders/blur.wgsl`. Without `exclude`, a plain blur of the premultiplied image. With
    /// it, a mask-aware blur: pixels under the mask carry no weight, so the result is the
    /// blurred background alone (holes filled from around them), with the original alpha.
    pub fn blur(
        &self,
        image: &GpuImage,
        exclude: Option<&GpuImage>,
        kind: BlurKind,
        radius: f32,
    ) -> Result<GpuImage> {
        let factor = (radius / LEVEL_RADIUS).ceil().max(1.0) as u32;
        let level = [image.width.div_ceil(factor), image.height.div_ceil(factor)];
        let level_bytes = level[0] as u64 * level[1] as u64 * 16;
        self.check_bytes(level_bytes)?;
        let a = self.storage(level_bytes, "blur level");
        let b = self.storage(level_bytes, "blur level");
        let output = self.empty_image(image.width, image.height)?;
        let params = |mode: u32, bloom: f32| {
            self.uniform(&Params {
                size: level,
                full_size: [image.width, image.height],
                radius: radius / factor as f32,
                factor,
                mode,
                bloom,
            })
        };
        let aware = exclude.is_some() as u32;
        let bloom = if kind == BlurKind::Bokeh { 1.0 } else { 0.0 };
        let weigh = params(aware, bloom);
        let pass = params(0, 0.0);
        let resolve = params(aware, 0.0);
        let mask = exclude.map_or(&image.buffer, |m| &m.buffer);
        let level_grid = grid(level[0], level[1]);
        let p = &self.blur;

        let mut encoder = self.encoder();
        self.dispatch(
            &mut encoder,
            &p.weigh,
            &[
                ("params", &weigh),
                ("packed", &image.buffer),
                ("mask", mask),
                ("dst", &a),
            ],
            level_grid,
        )?;
        let blurred = match kind {
            BlurKind::Gaussian => {
                self.dispatch(
                    &mut encoder,
                    &p.horizontal,
                    &[("params", &pass), ("src", &a), ("dst", &b)],
                    level_grid,
                )?;
                self.dispatch(
                    &mut encoder,
                    &p.vertical,
                    &[("params", &pass), ("src", &b), ("dst", &a)],
                    level_grid,
                )?;
                &a
            }
            BlurKind::Bokeh => {
                self.dispatch(
                    &mut encoder,
                    &p.disc,
                    &[("params", &pass), ("src", &a), ("dst", &b)],
                    level_grid,
                )?;
                &b
            }
        };
        self.dispatch(
            &mut encoder,
            &p.resolve,
            &[
                ("params", &resolve),
                ("packed", &image.buffer),
                ("src", blurred),
                ("dst_packed", &output.buffer),
            ],
            grid(image.width, image.height),
        )?;
        self.submit(encoder);
        Ok(output)
    }
}
