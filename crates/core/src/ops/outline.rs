use super::{GpuImage, ImageOps, compile_entries, grid};
use crate::error::Result;
use crate::gpu::Gpu;

pub(super) struct Pipelines {
    seed: wgpu::ComputePipeline,
    jump: wgpu::ComputePipeline,
    finish: wgpu::ComputePipeline,
}

impl Pipelines {
    pub fn new(gpu: &Gpu, module: &wgpu::ShaderModule) -> Self {
        let [seed, jump, finish] = compile_entries(gpu, module, ["seed", "jump", "finish"]);
        Self { seed, jump, finish }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    size: [u32; 2],
    step: u32,
    width: f32,
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
        self.dispatch_bound(
            &mut encoder,
            &p.seed,
            &[(0, &first), (1, &mask.buffer), (3, &seeds[0])],
            grid(w, h),
        );
        let mut current = 0;
        for step in steps {
            let pass = params(step);
            self.dispatch_bound(
                &mut encoder,
                &p.jump,
                &[(0, &pass), (2, &seeds[current]), (3, &seeds[1 - current])],
                grid(w, h),
            );
            current = 1 - current;
        }
        self.dispatch_bound(
            &mut encoder,
            &p.finish,
            &[(0, &first), (2, &seeds[current]), (4, &band.buffer)],
            grid(w, h),
        );
        self.submit(encoder);
        Ok(band)
    }
}
