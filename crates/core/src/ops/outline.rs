use super::{GpuImage, ImageOps, Kernel, Shader, compile_entries, grid};
use crate::error::Result;
use crate::gpu::Gpu;

pub(super) struct Pipelines {
    seed: Kernel,
    jump: Kernel,
    finish: Kernel,
}

impl Pipelines {
    pub fn new(gpu: &Gpu, shader: &Shader) -> Self {
        let [seed, jump, finish] = compile_entries(gpu, shader, ["seed", "jump", "finish"]);
        Self { seed, jump, finish }
    }
}

uniform! {
    struct Params {
        size: [u32; 2],
        step: u32,
        width: f32,
    }
}

impl ImageOps {
    /// `shaders/outline.wgsl`: a band `width` pixels wide around the mask (in alpha), by
    /// jump flooding: passes with steps 2^k down to 1, plus one more of 1 (JFA+1).
    pub fn outline(&self, mask: &GpuImage, width: f32) -> Result<GpuImage> {
        let (w, h) = (mask.width, mask.height);
        let seeds = [
            self.storage(w as u64 * h as u64 * 4, "seeds"),
            self.storage(w as u64 * h as u64 * 4, "seeds"),
        ];
        let band = self.empty_image(w, h)?;
        let params = |step: u32| {
            self.uniform(&Params {
                size: [w, h],
                step,
                width,
            })
        };
        let reach = (width.ceil() as u32 + 2).min(w.max(h));
        let mut steps = Vec::new();
        let mut step = reach.next_power_of_two();
        while step >= 1 {
            steps.push(step);
            step /= 2;
        }
        steps.push(1);

        let mut encoder = self.encoder();
        let p = &self.outline;
        let first = params(0);
        self.dispatch(
            &mut encoder,
            &p.seed,
            &[
                ("params", &first),
                ("mask", &mask.buffer),
                ("seeds_out", &seeds[0]),
            ],
            grid(w, h),
        )?;
        let mut current = 0;
        for step in steps {
            let pass = params(step);
            self.dispatch(
                &mut encoder,
                &p.jump,
                &[
                    ("params", &pass),
                    ("seeds_in", &seeds[current]),
                    ("seeds_out", &seeds[1 - current]),
                ],
                grid(w, h),
            )?;
            current = 1 - current;
        }
        self.dispatch(
            &mut encoder,
            &p.finish,
            &[
                ("params", &first),
                ("seeds_in", &seeds[current]),
                ("band", &band.buffer),
            ],
            grid(w, h),
        )?;
        self.submit(encoder);
        Ok(band)
    }
}
