use super::{BlurKind, GpuImage, ImageOps, Kernel, Shader, compile_entries, grid};
use crate::error::Result;
use crate::gpu::Gpu;

/// One projection of the subject's mask: canvas point `(x, y)` reads the mask at
/// `(t[0][0] x + t[0][1] y + t[0][2], t[1][0] x + t[1][1] y + t[1][2])`, then is blurred
/// (gaussian sigma in pixels) and laid over the shadow with `opacity`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShadowLayer {
    pub transform: [[f32; 3]; 2],
    pub blur: f32,
    pub opacity: f32,
}

pub(super) struct Pipelines {
    project: Kernel,
    accumulate: Kernel,
}

impl Pipelines {
    pub fn new(gpu: &Gpu, shader: &Shader) -> Self {
        let [project, accumulate] = compile_entries(gpu, shader, ["project", "accumulate"]);
        Self {
            project,
            accumulate,
        }
    }
}

uniform! {
    struct Params {
        size: [u32; 2],
        _pad: [u32; 2],
        row0: [f32; 4],
        row1: [f32; 4],
        opacity: f32,
        _pad2: [f32; 3],
    }
}

impl ImageOps {
    /// `shaders/shadow.wgsl`: the shadow's alpha on the canvas, from the canvas mask.
    pub fn shadow(&self, mask: &GpuImage, layers: &[ShadowLayer]) -> Result<GpuImage> {
        let (w, h) = (mask.width, mask.height);
        let shadow = self.empty_image(w, h)?;
        for layer in layers {
            let [r0, r1] = layer.transform;
            let params = self.uniform(&Params {
                size: [w, h],
                _pad: [0; 2],
                row0: [r0[0], r0[1], r0[2], 0.0],
                row1: [r1[0], r1[1], r1[2], 0.0],
                opacity: layer.opacity,
                _pad2: [0.0; 3],
            });
            let projected = self.empty_image(w, h)?;
            let mut encoder = self.encoder();
            self.dispatch(
                &mut encoder,
                &self.shadow.project,
                &[
                    ("params", &params),
                    ("src", &mask.buffer),
                    ("dst", &projected.buffer),
                ],
                grid(w, h),
            )?;
            self.submit(encoder);
            let blurred = self.blur(&projected, None, BlurKind::Gaussian, layer.blur)?;
            let mut encoder = self.encoder();
            self.dispatch(
                &mut encoder,
                &self.shadow.accumulate,
                &[
                    ("params", &params),
                    ("src", &blurred.buffer),
                    ("dst", &shadow.buffer),
                ],
                grid(w, h),
            )?;
            self.submit(encoder);
        }
        Ok(shadow)
    }
}
