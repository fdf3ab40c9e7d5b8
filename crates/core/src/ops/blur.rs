use super::{GpuImage, ImageOps, compile_entries, grid};
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
    weigh: wgpu::ComputePipeline,
    horizontal: wgpu::ComputePipeline,
    vertical: wgpu::ComputePipeline,
    disc: wgpu::ComputePipeline,
    resolve: wgpu::ComputePipeline,
}

impl Pipelines {
    pub fn new(gpu: &Gpu, module: &wgpu::ShaderModule) -> Self {
        let [weigh, horizontal, vertical, disc, resolve] = compile_entries(
            gpu,
            module,
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

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    size: [u32; 2],
    full_size: [u32; 2],
    radius: f32,
    factor: u32,
    mode: u32,
    bloom: f32,
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
        self.dispatch_bound(
            &mut encoder,
            &p.weigh,
            &[(0, &weigh), (1, &image.buffer), (2, mask), (4, &a)],
            level_grid,
        );
        let blurred = match kind {
            BlurKind::Gaussian => {
                self.dispatch_bound(
                    &mut encoder,
                    &p.horizontal,
                    &[(0, &pass), (3, &a), (4, &b)],
                    level_grid,
                );
                self.dispatch_bound(
                    &mut encoder,
                    &p.vertical,
                    &[(0, &pass), (3, &b), (4, &a)],
                    level_grid,
                );
                &a
            }
            BlurKind::Bokeh => {
                self.dispatch_bound(
                    &mut encoder,
                    &p.disc,
                    &[(0, &pass), (3, &a), (4, &b)],
                    level_grid,
                );
                &b
            }
        };
        self.dispatch_bound(
            &mut encoder,
            &p.resolve,
            &[
                (0, &resolve),
                (1, &image.buffer),
                (3, blurred),
                (5, &output.buffer),
            ],
            grid(image.width, image.height),
        );
        self.submit(encoder);
        Ok(output)
    }
}
