//! Image operations as WGSL compute shaders (one file per operation in `shaders/`), with
//! short wrappers that bind and dispatch them. Images live on the device as RGBA8 packed
//! into `u32`s, one per pixel.

mod bbox;
mod blur;
mod compose;
pub mod cpu;
mod located;
mod mask;
mod normalize;
mod outline;
mod place;
mod refine;
mod resize;
mod shadow;

pub use bbox::{MaskChannel, MaskStats};
pub use blur::BlurKind;
pub use compose::{ComposeLayers, ComposeStyle};
pub use located::Image;
pub use place::PlaceMap;
pub use refine::Refinement;
pub use resize::Filter;
pub use shadow::ShadowLayer;

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// Part of a device buffer (e.g. a burn tensor's storage): `size` bytes from `offset`.
#[derive(Clone, Copy)]
pub struct BufferRange<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

impl BufferRange<'_> {
    /// A binding that covers the range from an offset the device accepts, and the index of
    /// the range's first f32 inside that binding.
    fn binding(&self, gpu: &Gpu) -> (wgpu::BindingResource<'_>, u32) {
        let align = gpu.device.limits().min_storage_buffer_offset_alignment as u64;
        let start = self.offset / align * align;
        let size = std::num::NonZeroU64::new(self.offset + self.size - start)
            .expect("a range of at least one byte");
        let binding = wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.buffer,
            offset: start,
            size: Some(size),
        });
        (binding, ((self.offset - start) / 4) as u32)
    }
}

/// An RGBA8 image in a device storage buffer.
pub struct GpuImage {
    pub buffer: wgpu::Buffer,
    pub width: u32,
    pub height: u32,
}

impl GpuImage {
    pub fn pixel_count(&self) -> u32 {
        self.width * self.height
    }
}

/// The compiled pipelines and the device they run on.
pub struct ImageOps {
    gpu: Gpu,
    resize: wgpu::ComputePipeline,
    find_max: wgpu::ComputePipeline,
    normalize: wgpu::ComputePipeline,
    mask: wgpu::ComputePipeline,
    place: wgpu::ComputePipeline,
    bbox: wgpu::ComputePipeline,
    blur: blur::Pipelines,
    outline: outline::Pipelines,
    shadow: shadow::Pipelines,
    refine: refine::Pipelines,
    compose: wgpu::ComputePipeline,
    on_host: bool,
}

impl ImageOps {
    /// On a CPU adapter (lavapipe) the operations with a CPU version (`ops::cpu`) run on
    /// the host, where plain Rust over rayon's threads costs a fraction of lavapipe's
    /// time; `CUTOUT_HOST_OPS=1|0` overrides the choice, to measure either.
    pub fn new(gpu: &Gpu) -> Self {
        let on_host = match std::env::var("CUTOUT_HOST_OPS").as_deref() {
            Ok("1") => true,
            Ok("0") => false,
            _ => !gpu.is_hardware(),
        };
        Self::with_host_ops(gpu, on_host)
    }

    /// Operations with a CPU version run on the host when `on_host`, else as shaders.
    pub fn with_host_ops(gpu: &Gpu, on_host: bool) -> Self {
        let resize = compile(
            gpu,
            "resize",
            include_str!("../../../../shaders/resize.wgsl"),
        );
        let normalize = compile(
            gpu,
            "normalize",
            include_str!("../../../../shaders/normalize.wgsl"),
        );
        let mask = compile(gpu, "mask", include_str!("../../../../shaders/mask.wgsl"));
        let shader = |label: &str, source: &str| compile(gpu, label, source);
        let place = shader("place", include_str!("../../../../shaders/place.wgsl"));
        let bbox = shader("bbox", include_str!("../../../../shaders/bbox.wgsl"));
        let blur = shader("blur", include_str!("../../../../shaders/blur.wgsl"));
        let outline = shader("outline", include_str!("../../../../shaders/outline.wgsl"));
        let shadow = shader("shadow", include_str!("../../../../shaders/shadow.wgsl"));
        let compose = shader("compose", include_str!("../../../../shaders/compose.wgsl"));
        let refine = shader("refine", include_str!("../../../../shaders/refine.wgsl"));
        Self {
            gpu: gpu.clone(),
            resize: pipeline(gpu, &resize, "main"),
            find_max: pipeline(gpu, &normalize, "find_max"),
            normalize: pipeline(gpu, &normalize, "normalize"),
            mask: pipeline(gpu, &mask, "main"),
            place: pipeline(gpu, &place, "main"),
            bbox: pipeline(gpu, &bbox, "main"),
            blur: blur::Pipelines::new(gpu, &blur),
            outline: outline::Pipelines::new(gpu, &outline),
            shadow: shadow::Pipelines::new(gpu, &shadow),
            refine: refine::Pipelines::new(gpu, &refine),
            compose: pipeline(gpu, &compose, "main"),
            on_host,
        }
    }

    /// Whether the operations with a CPU version run on the host (see [`ImageOps::new`]).
    pub fn on_host(&self) -> bool {
        self.on_host
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    pub fn upload(&self, image: &image::RgbaImage) -> Result<GpuImage> {
        let (width, height) = image.dimensions();
        self.check_size(width, height)?;
        let buffer = self
            .gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("image"),
                contents: image.as_raw(),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            });
        Ok(GpuImage {
            buffer,
            width,
            height,
        })
    }

    pub fn download(&self, image: &GpuImage) -> Result<image::RgbaImage> {
        let bytes = self.read_buffer(&image.buffer, image.pixel_count() as u64 * 4)?;
        image::RgbaImage::from_raw(image.width, image.height, bytes)
            .ok_or_else(|| Error::Device("read back a buffer of the wrong size".into()))
    }

    /// A canvas-sized image with every pixel zero (transparent).
    pub fn empty_image(&self, width: u32, height: u32) -> Result<GpuImage> {
        self.check_size(width, height)?;
        Ok(GpuImage {
            buffer: self.storage(width as u64 * height as u64 * 4, "image"),
            width,
            height,
        })
    }

    fn check_size(&self, width: u32, height: u32) -> Result<()> {
        if width == 0 || height == 0 {
            return Err(Error::InvalidArgument(format!(
                "{width}x{height} has no pixels"
            )));
        }
        self.check_bytes(width as u64 * height as u64 * 4)
    }

    fn check_bytes(&self, bytes: u64) -> Result<()> {
        let limit = self.gpu.device.limits().max_storage_buffer_binding_size;
        if bytes > limit {
            return Err(Error::TooLarge(format!(
                "{bytes} bytes do not fit this device's largest buffer ({limit} bytes)"
            )));
        }
        Ok(())
    }

    fn storage(&self, size: u64, label: &str) -> wgpu::Buffer {
        self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    fn uniform<T: bytemuck::Pod>(&self, value: &T) -> wgpu::Buffer {
        self.gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: bytemuck::bytes_of(value),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// Records one dispatch of `pipeline` with `buffers` bound at bindings 0, 1, 2, ….
    fn dispatch(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[&wgpu::Buffer],
        workgroups: [u32; 3],
    ) {
        let bindings: Vec<_> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| (i as u32, *b))
            .collect();
        self.dispatch_bound(encoder, pipeline, &bindings, workgroups);
    }

    /// Records one dispatch with each buffer at its given binding: for shaders whose entry
    /// points use different subsets of the bindings.
    fn dispatch_bound(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        pipeline: &wgpu::ComputePipeline,
        bindings: &[(u32, &wgpu::Buffer)],
        workgroups: [u32; 3],
    ) {
        let resources: Vec<_> = bindings
            .iter()
            .map(|(binding, buffer)| (*binding, buffer.as_entire_binding()))
            .collect();
        self.dispatch_resources(encoder, pipeline, resources, workgroups);
    }

    /// Records one dispatch with each resource (a whole buffer or part of one) at its binding.
    fn dispatch_resources(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        pipeline: &wgpu::ComputePipeline,
        resources: Vec<(u32, wgpu::BindingResource)>,
        workgroups: [u32; 3],
    ) {
        let entries: Vec<_> = resources
            .into_iter()
            .map(|(binding, resource)| wgpu::BindGroupEntry { binding, resource })
            .collect();
        let bind_group = self
            .gpu
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
    }

    /// Waits until the device has finished the work submitted so far (not work other
    /// threads submit while this one waits).
    pub fn finish(&self) -> Result<()> {
        let submitted = self.gpu.queue.submit([]);
        self.wait_for(submitted)
            .map_err(|e| Error::DeviceLost(e.to_string()))
    }

    /// Runs `work` with the device's out-of-memory and validation errors caught as this
    /// thread's [`Error`] (`OutOfMemory`, `Device`) instead of wgpu's default handler, which
    /// panics. Errors wgpu reports for `work` win over `work`'s own result, which may have
    /// been computed from the failed operations.
    pub fn capturing<T>(&self, work: impl FnOnce() -> Result<T>) -> Result<T> {
        let device = &self.gpu.device;
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let result = work();
        // Native wgpu resolves a popped scope at once; nothing is awaited.
        let out_of_memory = pollster::block_on(memory.pop());
        let invalid = pollster::block_on(validation.pop());
        match out_of_memory.or(invalid) {
            Some(error) => Err(error.into()),
            None => result,
        }
    }

    fn wait_for(&self, submission: wgpu::SubmissionIndex) -> Result<(), wgpu::PollError> {
        self.gpu
            .device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(submission),
                timeout: None,
            })
            .map(|_| ())
    }

    fn encoder(&self) -> wgpu::CommandEncoder {
        self.gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default())
    }

    fn submit(&self, encoder: wgpu::CommandEncoder) {
        self.gpu.queue.submit([encoder.finish()]);
    }

    /// Copies `size` bytes of `buffer` back to the host, waiting for the device.
    fn read_buffer(&self, buffer: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        let staging = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.encoder();
        encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
        let copied = self.gpu.queue.submit([encoder.finish()]);
        let slice = staging.slice(..);
        let (sender, receiver) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |result| {
            let _ = sender.send(result);
        });
        self.wait_for(copied)
            .map_err(|e| Error::DeviceLost(format!("while reading back: {e}")))?;
        receiver
            .recv()
            .map_err(|_| Error::DeviceLost("the readback never completed".into()))?
            .map_err(|e| Error::DeviceLost(format!("reading back: {e}")))?;
        let bytes = slice
            .get_mapped_range()
            .map_err(|e| Error::DeviceLost(format!("reading back: {e}")))?
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }
}

fn compile(gpu: &Gpu, label: &str, source: &str) -> wgpu::ShaderModule {
    gpu.device
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(label),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        })
}

fn pipeline(gpu: &Gpu, module: &wgpu::ShaderModule, entry: &str) -> wgpu::ComputePipeline {
    gpu.device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        })
}

fn compile_entries<const N: usize>(
    gpu: &Gpu,
    module: &wgpu::ShaderModule,
    entries: [&str; N],
) -> [wgpu::ComputePipeline; N] {
    entries.map(|entry| pipeline(gpu, module, entry))
}

fn groups(count: u32, size: u32) -> u32 {
    count.div_ceil(size)
}

/// 8×8 workgroups covering a `width`×`height` image.
fn grid(width: u32, height: u32) -> [u32; 3] {
    [groups(width, 8), groups(height, 8), 1]
}
