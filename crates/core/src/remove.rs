//! The model's half of the pipeline: upload → resize to the model input → normalise →
//! segment (a whole batch at once) → min-max the mask → bring it back to the photo's size
//! (refined or upsampled). Everything after the mask is [`crate::edit::Editor`]'s.

use std::time::Instant;

use burn::tensor::{Device, Tensor};
use image::RgbaImage;

use crate::backend::TensorBuffer;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::{self, Session};
use crate::ops::{Filter, Image, ImageOps, Refinement, cpu};
use crate::timing::{Stage, StageTimes};

/// Which burn backend runs the model. Image operations always run on the wgpu device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelBackend {
    /// burn's wgpu backend on the same device as the image operations.
    Wgpu,
    /// burn's CPU backend: far faster than wgpu on a software adapter.
    Flex,
}

impl ModelBackend {
    /// Wgpu on hardware GPUs, flex on the software adapter; `CUTOUT_MODEL_BACKEND` overrides.
    pub fn choose(gpu: &Gpu) -> Self {
        match std::env::var("CUTOUT_MODEL_BACKEND").as_deref() {
            Ok("wgpu") => Self::Wgpu,
            Ok("flex") => Self::Flex,
            _ if gpu.is_hardware() => Self::Wgpu,
            _ => Self::Flex,
        }
    }

    pub fn device(self, gpu: &Gpu) -> Device {
        match self {
            Self::Wgpu => gpu.burn_device.clone(),
            Self::Flex => Device::flex(),
        }
    }
}

pub struct Remover {
    ops: ImageOps,
    session: Session,
}

impl Remover {
    pub fn new(gpu: &Gpu, session: Session) -> Self {
        let ops = ImageOps::new(gpu);
        if ops.on_host() {
            log::info!("model input, masks, placement and compositing on the CPU (ops::cpu)");
        }
        Self::with_ops(ops, session)
    }

    /// With operations placed as `ops` says (e.g. all on the device, to measure them).
    pub fn with_ops(ops: ImageOps, session: Session) -> Self {
        Self { ops, session }
    }

    /// Loads `model_name` (downloading it when allowed and missing) onto the backend
    /// `ModelBackend::choose` picks for `gpu`.
    /// `model` is the name of one of `model::MODELS`, the path of an ONNX file, or of a
    /// BiRefNet state dict (`.safetensors`, `.pth`).
    pub fn load(gpu: &Gpu, model: &str, allow_download: bool) -> Result<Self> {
        let backend = ModelBackend::choose(gpu);
        let device = backend.device(gpu);
        let session = if model::is_state_dict_file(model) {
            Session::from_state_dict(std::path::Path::new(model), &device)?
        } else if model::is_model_file(model) {
            let bytes = std::fs::read(model)
                .map_err(|e| Error::InvalidModel(format!("reading {model}: {e}")))?;
            Session::from_custom_onnx(bytes, &device)?
        } else {
            let spec = model::spec(model)?;
            Session::named(spec, allow_download, &device)?
        };
        let name = session.spec.name;
        if model == name {
            log::info!("model {model} on burn's {backend:?} backend");
        } else {
            log::info!("model {model} ({name}) on burn's {backend:?} backend");
        }
        Ok(Self::new(gpu, session))
    }

    pub fn ops(&self) -> &ImageOps {
        &self.ops
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The model's raw masks (values 0..255 after min-max, at the model's input size) for a
    /// batch of images. On the device, the commands that make them are left pending on this
    /// thread (see `ImageOps::record_into`).
    pub fn masks_of(&self, images: &[&Image], timings: &mut StageTimes) -> Result<Vec<Image>> {
        if let Some(masks) = self.masks_on_device(images, timings)? {
            return Ok(masks);
        }
        let spec = self.session.spec;
        let size = spec.input_size as u32;
        let start = Instant::now();
        let input = if self.ops.on_host() {
            let mut input = Vec::with_capacity(images.len() * 3 * (size * size) as usize);
            for image in images {
                let small = cpu::resize(self.ops.host(image)?, size, size, Filter::Lanczos3);
                input.extend(cpu::normalize(&small, spec.mean, spec.std));
            }
            input
        } else {
            // Hand-off to the model on the CPU: the batch's input planes, read back at once.
            let small = images
                .iter()
                .map(|image| {
                    let photo = self.ops.device(image)?;
                    self.ops.resize(photo, size, size, Filter::Lanczos3)
                })
                .collect::<Result<Vec<_>>>()?;
            let small: Vec<&_> = small.iter().collect();
            self.ops.normalize_batch(&small, spec.mean, spec.std)?
        };
        timings.add(Stage::Preprocess, start.elapsed());

        let start = Instant::now();
        let side = spec.input_size;
        let output = self.session.predict(input, images.len(), [side, side])?;
        timings.add(Stage::Forward, start.elapsed());

        output
            .chunks_exact(side * side)
            .map(|prediction| self.ops.image(mask_image(prediction, size)))
            .collect()
    }

    /// On burn's wgpu backend: the input planes are written into the model's input tensor
    /// and the masks read from its output tensor, all on the device. `None` for a model on
    /// the CPU.
    fn masks_on_device(
        &self,
        images: &[&Image],
        timings: &mut StageTimes,
    ) -> Result<Option<Vec<Image>>> {
        if !self.session.shares_buffers() {
            return Ok(None);
        }
        let spec = self.session.spec;
        let side = spec.input_size;
        let start = Instant::now();
        let input = Tensor::<4>::zeros([images.len(), 3, side, side], self.session.device());
        let Some(input) = TensorBuffer::of(input) else {
            return Ok(None);
        };
        let planes = (3 * side * side) as u64;
        for (i, image) in images.iter().enumerate() {
            let photo = self.ops.device(image)?;
            let small = self
                .ops
                .resize(photo, side as u32, side as u32, Filter::Lanczos3)?;
            let slot = input.range(i as u64 * planes, planes);
            self.ops.normalize_into(&small, spec.mean, spec.std, slot)?;
        }
        // burn reads the input tensor on the same queue: the planes must be submitted first.
        self.ops.flush();
        timings.add(Stage::Preprocess, start.elapsed());

        let start = Instant::now();
        let output =
            TensorBuffer::of(self.session.forward(input.into_tensor())).ok_or_else(|| {
                Error::InvalidModel("the model's output is not an f32 tensor on the device".into())
            })?;
        let pixels = (side * side) as u64;
        let masks = (0..images.len() as u64)
            .map(|i| {
                let prediction = output.range(i * pixels, pixels);
                Ok(self
                    .ops
                    .mask_from_prediction(prediction, side as u32)?
                    .into())
            })
            .collect::<Result<Vec<_>>>()?;
        // The masks' commands stay pending: the caller submits them with what reads them.
        timings.add(Stage::Forward, start.elapsed());
        Ok(Some(masks))
    }

    /// `mask` (from [`Remover::masks_of`]) at the size of `image`: refined with the photo
    /// as guide (`ops::refine_mask`), or upsampled with Lanczos as rembg does.
    pub fn full_size_mask(
        &self,
        image: &Image,
        mask: &Image,
        refinement: Option<Refinement>,
    ) -> Result<Image> {
        match refinement {
            Some(refinement) => self.ops.refine_image(image, mask, refinement),
            None => {
                let (width, height) = (image.width(), image.height());
                self.ops.resize_image(mask, width, height, Filter::Lanczos3)
            }
        }
    }
}

/// rembg's mask post-processing: min-max normalise, then truncate to 8 bits.
fn mask_image(prediction: &[f32], size: u32) -> RgbaImage {
    let (min, max) = prediction
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let range = (max - min).max(f32::EPSILON);
    let mut mask = RgbaImage::new(size, size);
    for (pixel, &value) in mask.pixels_mut().zip(prediction) {
        let v = (((value - min) / range) * 255.0) as u8;
        pixel.0 = [v, v, v, 255];
    }
    mask
}
