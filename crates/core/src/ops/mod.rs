//! Image operations as WGSL compute shaders (one file per operation in `shaders/`), with
//! short wrappers that bind and dispatch them. Images live on the device as RGBA8 packed
//! into `u32`s, one per pixel.

/// A shader's uniform struct as the host writes it: `#[repr(C)]` plain old data and, for
/// the test that checks it against the shader (`tests::uniforms_match_the_shaders`), each
/// field's name, offset and size. Fields named `_…` are padding.
macro_rules! uniform {
    (struct $name:ident { $($field:ident: $ty:ty,)* }) => {
        #[repr(C)]
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        pub(super) struct $name {
            $($field: $ty,)*
        }

        #[cfg(test)]
        impl $name {
            pub(super) const FIELDS: &[super::tests::Field] = &[$(super::tests::Field {
                name: stringify!($field),
                offset: std::mem::offset_of!($name, $field),
                size: std::mem::size_of::<$ty>(),
            },)*];
        }
    };
}

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
mod spill;

pub use bbox::{MaskChannel, MaskStats};
pub use blur::BlurKind;
pub use compose::{ComposeLayers, ComposeStyle};
pub use located::{Image, Measured, SpillKey};
pub use place::PlaceMap;
pub use refine::Refinement;
pub use resize::Filter;
pub use shadow::ShadowLayer;
pub use spill::Limiter;

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

/// An RGBA8 image in a device storage buffer of exactly `width * height` pixels, made only
/// by [`ImageOps`] (which checks the size against the device's limits).
pub struct GpuImage {
    buffer: wgpu::Buffer,
    width: u32,
    height: u32,
}

impl GpuImage {
    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    pub fn pixel_count(&self) -> u32 {
        self.width * self.height
    }
}

/// The compiled pipelines and the device they run on.
pub struct ImageOps {
    gpu: Gpu,
    resize: Kernel,
    find_max: Kernel,
    normalize: Kernel,
    mask: Kernel,
    place: Kernel,
    bbox: Kernel,
    blur: blur::Pipelines,
    outline: outline::Pipelines,
    shadow: shadow::Pipelines,
    refine: refine::Pipelines,
    compose: Kernel,
    spill: spill::Pipelines,
    on_host: bool,
    /// Each thread's commands recorded since its last submit: operations append to them
    /// and only a readback or [`ImageOps::flush`] submits, so a job's operations go to the
    /// device in one command buffer.
    pending:
        std::sync::Mutex<std::collections::HashMap<std::thread::ThreadId, wgpu::CommandEncoder>>,
    counters: Counters,
}

/// What cutout itself asked of the device (burn's own submissions are not counted).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeviceCounters {
    /// Command buffers submitted.
    pub submits: u64,
    /// Buffers mapped to read results back.
    pub readbacks: u64,
    pub bytes_uploaded: u64,
    pub bytes_read_back: u64,
}

#[derive(Default)]
struct Counters {
    submits: std::sync::atomic::AtomicU64,
    readbacks: std::sync::atomic::AtomicU64,
    bytes_uploaded: std::sync::atomic::AtomicU64,
    bytes_read_back: std::sync::atomic::AtomicU64,
}

fn count(counter: &std::sync::atomic::AtomicU64, by: u64) {
    counter.fetch_add(by, std::sync::atomic::Ordering::Relaxed);
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
        let shader = |file: &'static str| compile(gpu, file);
        let (resize, normalize, mask) = (shader("resize"), shader("normalize"), shader("mask"));
        let (place, bbox, blur) = (shader("place"), shader("bbox"), shader("blur"));
        let (outline, shadow) = (shader("outline"), shader("shadow"));
        let (compose, refine, spill) = (shader("compose"), shader("refine"), shader("spill"));
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
            spill: spill::Pipelines::new(gpu, &spill),
            on_host,
            pending: Default::default(),
            counters: Counters::default(),
        }
    }

    /// Whether the operations with a CPU version run on the host (see [`ImageOps::new`]).
    pub fn on_host(&self) -> bool {
        self.on_host
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The device work cutout has asked for so far.
    pub fn counters(&self) -> DeviceCounters {
        let read = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        DeviceCounters {
            submits: read(&self.counters.submits),
            readbacks: read(&self.counters.readbacks),
            bytes_uploaded: read(&self.counters.bytes_uploaded),
            bytes_read_back: read(&self.counters.bytes_read_back),
        }
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
        count(&self.counters.bytes_uploaded, image.as_raw().len() as u64);
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

    /// A storage buffer (as [`ImageOps::storage`]) holding `contents`.
    fn storage_init(&self, contents: &[u8], label: &str) -> wgpu::Buffer {
        self.gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
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

    /// Records one dispatch of `kernel` with each buffer bound to the shader variable of
    /// its name.
    fn dispatch(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: &Kernel,
        buffers: &[(&str, &wgpu::Buffer)],
        workgroups: [u32; 3],
    ) -> Result<()> {
        let resources = buffers
            .iter()
            .map(|(name, buffer)| (*name, buffer.as_entire_binding()))
            .collect();
        self.dispatch_resources(encoder, kernel, resources, workgroups)
    }

    /// Records one dispatch with each resource (a whole buffer or part of one) bound to the
    /// shader variable of its name.
    fn dispatch_resources(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: &Kernel,
        resources: Vec<(&str, wgpu::BindingResource)>,
        workgroups: [u32; 3],
    ) -> Result<()> {
        let entries = resources
            .into_iter()
            .map(|(name, resource)| {
                Ok(wgpu::BindGroupEntry {
                    binding: kernel.shader.binding(name)?,
                    resource,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let bind_group = self
            .gpu
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(kernel.shader.file),
                layout: &kernel.pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        Ok(())
    }

    /// Waits until the device has finished the work submitted so far (not work other
    /// threads submit while this one waits).
    pub fn finish(&self) -> Result<()> {
        let submitted = self.flush();
        self.wait_for(submitted)
            .map_err(|e| Error::DeviceLost(e.to_string()))
    }

    /// Submits the commands this thread has recorded, if any (one command buffer), e.g.
    /// before other code (burn, another thread) reads what they write.
    pub fn flush(&self) -> wgpu::SubmissionIndex {
        let pending = self.take_pending();
        match pending {
            Some(encoder) => self.submit_now(encoder),
            None => self.gpu.queue.submit([]),
        }
    }

    fn has_pending(&self) -> bool {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.contains_key(&std::thread::current().id())
    }

    fn take_pending(&self) -> Option<wgpu::CommandEncoder> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.remove(&std::thread::current().id())
    }

    fn submit_now(&self, encoder: wgpu::CommandEncoder) -> wgpu::SubmissionIndex {
        count(&self.counters.submits, 1);
        self.gpu.queue.submit([encoder.finish()])
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

    /// This thread's pending commands to record more into (see `pending`).
    fn encoder(&self) -> wgpu::CommandEncoder {
        self.take_pending().unwrap_or_else(|| {
            self.gpu
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor::default())
        })
    }

    /// Keeps `encoder` as this thread's pending commands; they are submitted with the next
    /// readback or flush.
    fn submit(&self, encoder: wgpu::CommandEncoder) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.insert(std::thread::current().id(), encoder);
    }

    /// Copies `size` bytes of `buffer` back to the host, waiting for the device.
    fn read_buffer(&self, buffer: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        let read = self.read_recorded(Recording::default(), &[(buffer, size)])?;
        Ok(read.parts.into_iter().next().unwrap_or_default())
    }

    /// Runs `work`, whose device commands are recorded into `recording` when it succeeds
    /// and dropped when it fails, so one job's failure cannot spoil the commands of the
    /// others it is submitted with. Errors are caught as in [`ImageOps::capturing`].
    pub fn record_into<T>(
        &self,
        recording: &mut Recording,
        work: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        // Commands recorded before belong to other work: they go to the device first.
        if let Some(earlier) = self.take_pending() {
            self.submit_now(earlier);
        }
        let result = self.capturing(work);
        if let (Ok(_), Some(encoder)) = (&result, self.take_pending()) {
            recording.buffers.push(encoder.finish());
        }
        result
    }

    /// Submits `recording` now (nothing when it is empty).
    pub fn submit_recording(&self, recording: Recording) {
        if !recording.buffers.is_empty() {
            count(&self.counters.submits, 1);
            self.gpu.queue.submit(recording.buffers);
        }
    }

    /// Submits `recording` and copies of each `(buffer, size)` as one submission, and reads
    /// the copies back through one mapped buffer.
    fn read_recorded(
        &self,
        recording: Recording,
        parts: &[(&wgpu::Buffer, u64)],
    ) -> Result<ReadBack> {
        let total: u64 = parts.iter().map(|&(_, size)| size).sum();
        if total == 0 && recording.buffers.is_empty() && !self.has_pending() {
            // Nothing ran on the device, but a loss is still noticed at the batch it
            // happened in, so the caller can reopen the device before the next one.
            self.finish()?;
            return Ok(ReadBack::nothing(parts.len()));
        }
        let mut encoder = self.encoder();
        let staging = (total > 0).then(|| {
            self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: total,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        if let Some(staging) = &staging {
            let mut offset = 0;
            for &(buffer, size) in parts {
                encoder.copy_buffer_to_buffer(buffer, 0, staging, offset, size);
                offset += size;
            }
        }
        let started = std::time::Instant::now();
        count(&self.counters.submits, 1);
        let buffers = recording.buffers.into_iter().chain([encoder.finish()]);
        let submitted = self.gpu.queue.submit(buffers);
        let Some(staging) = staging else {
            return Ok(ReadBack::nothing(parts.len()));
        };
        count(&self.counters.readbacks, 1);
        count(&self.counters.bytes_read_back, total);
        let slice = staging.slice(..);
        let (sender, receiver) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |result| {
            let _ = sender.send(result);
        });
        self.wait_for(submitted)
            .map_err(|e| Error::DeviceLost(format!("while reading back: {e}")))?;
        let device_time = started.elapsed();
        receiver
            .recv()
            .map_err(|_| Error::DeviceLost("the readback never completed".into()))?
            .map_err(|e| Error::DeviceLost(format!("reading back: {e}")))?;
        let mapped = slice
            .get_mapped_range()
            .map_err(|e| Error::DeviceLost(format!("reading back: {e}")))?;
        let mut offset = 0;
        let read = parts
            .iter()
            .map(|&(_, size)| {
                let part = mapped[offset..offset + size as usize].to_vec();
                offset += size as usize;
                part
            })
            .collect();
        drop(mapped);
        staging.unmap();
        Ok(ReadBack {
            parts: read,
            device_time,
        })
    }
}

/// Device commands of several jobs, recorded by [`ImageOps::record_into`] and submitted
/// together by the batch's readback.
#[derive(Default)]
pub struct Recording {
    buffers: Vec<wgpu::CommandBuffer>,
}

/// Bytes read back by one submission, and how long the device took to run it (the
/// recorded work and the copies) before they could be mapped.
struct ReadBack {
    parts: Vec<Vec<u8>>,
    device_time: std::time::Duration,
}

impl ReadBack {
    /// `count` empty parts, where nothing was copied.
    fn nothing(count: usize) -> Self {
        Self {
            parts: vec![Vec::new(); count],
            device_time: std::time::Duration::ZERO,
        }
    }
}

/// Every WGSL file in `shaders/`, by name, built into the binary.
const SHADERS: [(&str, &str); 11] = [
    ("bbox", include_str!("../../../../shaders/bbox.wgsl")),
    ("blur", include_str!("../../../../shaders/blur.wgsl")),
    ("compose", include_str!("../../../../shaders/compose.wgsl")),
    ("mask", include_str!("../../../../shaders/mask.wgsl")),
    (
        "normalize",
        include_str!("../../../../shaders/normalize.wgsl"),
    ),
    ("outline", include_str!("../../../../shaders/outline.wgsl")),
    ("place", include_str!("../../../../shaders/place.wgsl")),
    ("refine", include_str!("../../../../shaders/refine.wgsl")),
    ("resize", include_str!("../../../../shaders/resize.wgsl")),
    ("shadow", include_str!("../../../../shaders/shadow.wgsl")),
    ("spill", include_str!("../../../../shaders/spill.wgsl")),
];

/// What naga reads from a WGSL file: the binding of each resource, by variable name.
/// Wrappers bind by the shader's own names, so no binding index is kept in sync by hand.
struct Reflection {
    file: &'static str,
    bindings: std::collections::HashMap<String, u32>,
}

impl Reflection {
    fn of(file: &'static str, source: &str) -> Self {
        // The shaders are part of the binary and parsed by a test (`shader_interfaces`):
        // a parse error here is a build that was never tested.
        let module = naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|e| panic!("shaders/{file}.wgsl: {}", e.emit_to_string(source)));
        let bindings = module
            .global_variables
            .iter()
            .filter_map(|(_, global)| {
                Some((global.name.clone()?, global.binding.as_ref()?.binding))
            })
            .collect();
        Self { file, bindings }
    }

    fn binding(&self, name: &str) -> Result<u32> {
        self.bindings.get(name).copied().ok_or_else(|| {
            Error::Device(format!(
                "shaders/{}.wgsl has no binding named '{name}'",
                self.file
            ))
        })
    }
}

/// A compiled WGSL file.
struct Shader {
    module: wgpu::ShaderModule,
    reflection: std::sync::Arc<Reflection>,
}

/// One entry point of a shader, ready to dispatch.
struct Kernel {
    pipeline: wgpu::ComputePipeline,
    shader: std::sync::Arc<Reflection>,
}

fn compile(gpu: &Gpu, file: &'static str) -> Shader {
    let (_, source) = SHADERS
        .iter()
        .find(|(name, _)| *name == file)
        .expect("a file listed in SHADERS");
    let module = gpu
        .device
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(file),
            source: wgpu::ShaderSource::Wgsl((*source).into()),
        });
    Shader {
        module,
        reflection: std::sync::Arc::new(Reflection::of(file, source)),
    }
}

fn pipeline(gpu: &Gpu, shader: &Shader, entry: &str) -> Kernel {
    let pipeline = gpu
        .device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module: &shader.module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
    Kernel {
        pipeline,
        shader: shader.reflection.clone(),
    }
}

fn compile_entries<const N: usize>(gpu: &Gpu, shader: &Shader, entries: [&str; N]) -> [Kernel; N] {
    entries.map(|entry| pipeline(gpu, shader, entry))
}

fn groups(count: u32, size: u32) -> u32 {
    count.div_ceil(size)
}

/// 8×8 workgroups covering a `width`×`height` image.
fn grid(width: u32, height: u32) -> [u32; 3] {
    [groups(width, 8), groups(height, 8), 1]
}

#[cfg(test)]
pub(super) mod tests {
    use naga::valid::{Capabilities, ValidationFlags, Validator};

    use super::SHADERS;

    /// One field of a host-side uniform struct (see `uniform!`).
    pub struct Field {
        pub name: &'static str,
        pub offset: usize,
        pub size: usize,
    }

    /// Each shader's uniform struct as its wrapper writes it: fields and total size.
    fn host_uniforms() -> [(&'static str, &'static [Field], usize); 11] {
        use std::mem::size_of;
        [
            (
                "bbox",
                super::bbox::Params::FIELDS,
                size_of::<super::bbox::Params>(),
            ),
            (
                "blur",
                super::blur::Params::FIELDS,
                size_of::<super::blur::Params>(),
            ),
            (
                "compose",
                super::compose::Params::FIELDS,
                size_of::<super::compose::Params>(),
            ),
            (
                "mask",
                super::mask::Params::FIELDS,
                size_of::<super::mask::Params>(),
            ),
            (
                "normalize",
                super::normalize::Params::FIELDS,
                size_of::<super::normalize::Params>(),
            ),
            (
                "outline",
                super::outline::Params::FIELDS,
                size_of::<super::outline::Params>(),
            ),
            (
                "place",
                super::place::Params::FIELDS,
                size_of::<super::place::Params>(),
            ),
            (
                "refine",
                super::refine::Params::FIELDS,
                size_of::<super::refine::Params>(),
            ),
            (
                "resize",
                super::resize::Params::FIELDS,
                size_of::<super::resize::Params>(),
            ),
            (
                "shadow",
                super::shadow::Params::FIELDS,
                size_of::<super::shadow::Params>(),
            ),
            (
                "spill",
                super::spill::Params::FIELDS,
                size_of::<super::spill::Params>(),
            ),
        ]
    }

    fn module(file: &str) -> naga::Module {
        let (_, source) = SHADERS.iter().find(|(name, _)| *name == file).unwrap();
        let module = naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|e| panic!("shaders/{file}.wgsl: {}", e.emit_to_string(source)));
        Validator::new(ValidationFlags::all(), Capabilities::default())
            .validate(&module)
            .unwrap_or_else(|e| panic!("shaders/{file}.wgsl: {}", e.emit_to_string(source)));
        module
    }

    /// Every WGSL file in `shaders/` is built in, parses and validates.
    #[test]
    fn every_shader_is_built_in_and_valid() {
        let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shaders");
        let mut on_disk: Vec<String> = std::fs::read_dir(folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter_map(|name| name.strip_suffix(".wgsl").map(str::to_string))
            .collect();
        on_disk.sort();
        let built_in: Vec<&str> = SHADERS.iter().map(|(name, _)| *name).collect();
        assert_eq!(on_disk, built_in);
        for (file, _) in SHADERS {
            module(file);
        }
    }

    /// The differences between a shader's uniform struct (by naga) and its wrapper's, one
    /// line per field, naming it.
    fn uniform_differences(file: &str, fields: &[Field], size: usize) -> Vec<String> {
        let module = module(file);
        let (_, global) = module
            .global_variables
            .iter()
            .find(|(_, g)| g.space == naga::AddressSpace::Uniform)
            .unwrap_or_else(|| panic!("shaders/{file}.wgsl has no uniform"));
        let naga::TypeInner::Struct { members, span } = &module.types[global.ty].inner else {
            panic!("shaders/{file}.wgsl: the uniform is not a struct");
        };
        let host: Vec<&Field> = fields.iter().filter(|f| !f.name.starts_with('_')).collect();
        let mut differences = Vec::new();
        // Padding is named `_…` on either side, or left implicit in WGSL.
        let members: Vec<&naga::StructMember> = members
            .iter()
            .filter(|m| !m.name.as_deref().unwrap_or("").starts_with('_'))
            .collect();
        for (i, member) in members.iter().enumerate() {
            let name = member.name.as_deref().unwrap_or("?");
            let member_size = module.types[member.ty].inner.size(module.to_ctx()) as usize;
            match host.get(i) {
                None => differences.push(format!("{file}: field '{name}' is missing on the host")),
                Some(field) if field.name != name => differences.push(format!(
                    "{file}: field {i} is '{name}' in the shader, '{}' on the host",
                    field.name
                )),
                Some(field) if (field.offset, field.size) != (member.offset as usize, member_size) => {
                    differences.push(format!(
                        "{file}: field '{name}' is at {} ({} bytes) in the shader, at {} ({} bytes) on the host",
                        member.offset, member_size, field.offset, field.size
                    ))
                }
                Some(_) => {}
            }
        }
        for field in host.iter().skip(members.len()) {
            differences.push(format!(
                "{file}: field '{}' is not in the shader",
                field.name
            ));
        }
        let span = *span as usize;
        if size < span || size > span.next_multiple_of(16) {
            differences.push(format!(
                "{file}: the struct is {span} bytes in the shader, {size} on the host"
            ));
        }
        differences
    }

    /// Each wrapper's uniform struct has the shader's fields, in order, at the shader's
    /// offsets and sizes (naga's layout of the WGSL struct).
    #[test]
    fn uniforms_match_the_shaders() {
        let differences: Vec<String> = host_uniforms()
            .into_iter()
            .flat_map(|(file, fields, size)| uniform_differences(file, fields, size))
            .collect();
        assert!(differences.is_empty(), "{}", differences.join("\n"));
    }

    /// A stale wrapper is caught and named: a field moved, renamed or missing.
    #[test]
    fn a_stale_uniform_is_named() {
        let field = |name, offset, size| Field { name, offset, size };
        // outline.wgsl: size vec2<u32> @0, step u32 @8, width f32 @12.
        let swapped = [
            field("size", 0, 8),
            field("width", 8, 4),
            field("step", 12, 4),
        ];
        let found = uniform_differences("outline", &swapped, 16);
        assert!(
            found
                .iter()
                .any(|d| d.contains("field 1 is 'step' in the shader, 'width'")),
            "{found:?}"
        );
        let short = [field("size", 0, 8), field("step", 8, 4)];
        let found = uniform_differences("outline", &short, 12);
        assert!(
            found.iter().any(|d| d.contains("'width' is missing")),
            "{found:?}"
        );
        let wide = [
            field("size", 0, 8),
            field("step", 8, 8),
            field("width", 16, 4),
        ];
        let found = uniform_differences("outline", &wide, 32);
        assert!(
            found.iter().any(|d| d.contains("'step' is at 8 (4 bytes)")),
            "{found:?}"
        );
        assert!(
            uniform_differences(
                "outline",
                &[
                    field("size", 0, 8),
                    field("step", 8, 4),
                    field("width", 12, 4)
                ],
                16
            )
            .is_empty()
        );
    }

    /// A struct a shader reads or writes through a storage buffer: each member's name,
    /// offset and size, and the struct's size, as naga lays it out.
    #[derive(PartialEq, Debug)]
    struct StorageStruct {
        members: Vec<(String, u32, u32)>,
        span: u32,
    }

    /// The storage structs of a shader, by type name.
    fn storage_structs(module: &naga::Module) -> Vec<(String, StorageStruct)> {
        module
            .global_variables
            .iter()
            .filter(|(_, g)| matches!(g.space, naga::AddressSpace::Storage { .. }))
            .filter_map(|(_, g)| {
                let ty = &module.types[g.ty];
                let naga::TypeInner::Struct { members, span } = &ty.inner else {
                    return None;
                };
                let members = members
                    .iter()
                    .map(|m| {
                        let size = module.types[m.ty].inner.size(module.to_ctx());
                        (m.name.clone().unwrap_or_default(), m.offset, size)
                    })
                    .collect();
                let name = ty.name.clone().unwrap_or_default();
                Some((
                    name,
                    StorageStruct {
                        members,
                        span: *span,
                    },
                ))
            })
            .collect()
    }

    /// Where two shaders declare a storage struct of one name differently (WGSL has no
    /// include, so a struct shared through a buffer is written out in each), one line each.
    fn shared_struct_differences(shaders: &[(&str, naga::Module)]) -> Vec<String> {
        let mut first_seen: Vec<(String, &str, StorageStruct)> = Vec::new();
        let mut differences = Vec::new();
        for (file, module) in shaders {
            for (name, layout) in storage_structs(module) {
                match first_seen.iter().find(|(seen, ..)| *seen == name) {
                    Some((_, other, seen)) if *seen != layout => differences.push(format!(
                        "struct {name}: {other}.wgsl has {seen:?}, {file}.wgsl has {layout:?}"
                    )),
                    Some(_) => {}
                    None => first_seen.push((name, file, layout)),
                }
            }
        }
        differences
    }

    /// Storage structs that several shaders share (the spill `Limiter`: written by
    /// spill.wgsl, read by compose.wgsl) agree member by member, and the buffers the host
    /// allocates for them are the shaders' size.
    #[test]
    fn shared_storage_structs_agree() {
        let shaders: Vec<(&str, naga::Module)> = SHADERS
            .iter()
            .map(|(file, _)| (*file, module(file)))
            .collect();
        let differences = shared_struct_differences(&shaders);
        assert!(differences.is_empty(), "{}", differences.join("\n"));
        let host_sizes = [
            ("Limiter", super::spill::LIMITER_BYTES),
            ("Sums", super::spill::SUMS_BYTES as u64),
            ("Stats", super::bbox::STATS_BYTES),
        ];
        let mut checked = 0;
        for (file, module) in &shaders {
            for (name, layout) in storage_structs(module) {
                let (_, bytes) = host_sizes
                    .iter()
                    .find(|(host, _)| *host == name)
                    .unwrap_or_else(|| panic!("{file}.wgsl: struct {name} has no host size"));
                assert_eq!(u64::from(layout.span), *bytes, "{file}.wgsl: struct {name}");
                checked += 1;
            }
        }
        assert_eq!(checked, 4, "Limiter twice, Sums and Stats once");
    }

    /// A shader whose copy of a shared struct went stale is named, with both layouts.
    #[test]
    fn a_stale_shared_struct_is_named() {
        let (_, spill) = SHADERS.iter().find(|(name, _)| *name == "spill").unwrap();
        let swapped = spill.replace(
            "weights: vec4<f32>,\n    direction: vec4<f32>,",
            "direction: vec4<f32>,\n    weights: vec4<f32>,",
        );
        assert_ne!(&swapped, spill, "the test must change the struct");
        let stale = naga::front::wgsl::parse_str(&swapped).unwrap();
        let found = shared_struct_differences(&[("compose", module("compose")), ("spill", stale)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("struct Limiter: compose.wgsl has")
                && found[0].contains("(\"weights\", 0, 16)")
                && found[0]
                    .contains("spill.wgsl has StorageStruct { members: [(\"direction\", 0, 16)"),
            "{}",
            found[0]
        );
    }

    /// Bindings are looked up by the shader's own variable names; a name the shader does
    /// not have is a typed error naming the file and the variable.
    #[test]
    fn bindings_are_found_by_name() {
        let (_, source) = SHADERS.iter().find(|(name, _)| *name == "blur").unwrap();
        let reflection = super::Reflection::of("blur", source);
        assert_eq!(reflection.binding("params").unwrap(), 0);
        assert_eq!(reflection.binding("dst_packed").unwrap(), 5);
        let error = reflection.binding("dst_pakced").unwrap_err();
        assert!(matches!(error, crate::Error::Device(_)));
        assert!(
            error
                .to_string()
                .contains("shaders/blur.wgsl has no binding named 'dst_pakced'"),
            "{error}"
        );
    }
}
