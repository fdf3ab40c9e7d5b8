use super::{GpuImage, ImageOps, Kernel, Shader, compile_entries, grid};
use crate::error::Result;

pub(super) struct Pipelines {
    measure: Kernel,
    limiter: Kernel,
}

impl Pipelines {
    pub fn new(gpu: &crate::gpu::Gpu, shader: &Shader) -> Self {
        let [measure, limiter] = compile_entries(gpu, shader, ["measure", "limiter_from_sums"]);
        Self { measure, limiter }
    }
}

uniform! {
    struct Params {
        mask_size: [u32; 2],
        photo_size: [u32; 2],
    }
}

/// A spill limiter in a device buffer, as `compose.wgsl` reads it: the subject loses
/// `max(0, rgb·weights) × direction`.
pub struct Limiter {
    pub(super) buffer: wgpu::Buffer,
}

/// The size of the `Limiter` struct of `spill.wgsl` and `compose.wgsl`: two `vec4<f32>`.
pub(super) const LIMITER_BYTES: u64 = 32;

/// The size of `spill.wgsl`'s `Sums`: four `u32`s.
pub(super) const SUMS_BYTES: usize = 16;

impl ImageOps {
    /// `shaders/spill.wgsl`: the limiter for the photo's background colour where the
    /// model's `mask` (any size, red channel) says background, or for green when that is
    /// not coloured. Computed and consumed on the device.
    pub fn measure_spill(&self, photo: &GpuImage, mask: &GpuImage) -> Result<Limiter> {
        let params = self.uniform(&Params {
            mask_size: [mask.width, mask.height],
            photo_size: [photo.width, photo.height],
        });
        let sums = self.storage_init(&[0; SUMS_BYTES], "spill sums");
        // Written whole by `limiter_from_sums`.
        let limiter = self.storage(LIMITER_BYTES, "spill limiter");
        // Each entry point binds only what it uses (the layouts are derived per entry).
        let mut encoder = self.encoder();
        self.dispatch(
            &mut encoder,
            &self.spill.measure,
            &[
                ("params", &params),
                ("mask", &mask.buffer),
                ("photo", &photo.buffer),
                ("sums", &sums),
            ],
            grid(mask.width, mask.height),
        )?;
        self.dispatch(
            &mut encoder,
            &self.spill.limiter,
            &[("sums", &sums), ("limiter", &limiter)],
            [1, 1, 1],
        )?;
        self.submit(encoder);
        Ok(Limiter { buffer: limiter })
    }

    /// The limiter for a known background colour (`None`: no spill removal), written by
    /// the host.
    pub(super) fn known_spill(&self, key: Option<[f32; 3]>) -> Limiter {
        let (weights, direction) = key.map_or(([0.0; 4], [0.0; 4]), super::compose::spill_limiter);
        let buffer =
            self.storage_init(bytemuck::cast_slice(&[weights, direction]), "spill limiter");
        Limiter { buffer }
    }
}
