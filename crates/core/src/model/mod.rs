//! Segmentation models: where their weights come from and how a batch runs through them.

pub mod birefnet;
pub mod cpu_attention;
pub mod cpu_conv;
pub mod cpu_deform;
pub mod cpu_resample;
pub mod download;
pub mod isnet;
pub mod onnx;
pub mod rsu;
pub mod state_dict;
pub mod u2net;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use md5::{Digest, Md5};
use rayon::prelude::*;

use crate::error::{Error, Result};
use isnet::IsNet;
use u2net::U2Net;

/// A segmentation network with its weights loaded: normalised images in, mask out.
pub trait Network: std::fmt::Debug + Send + Sync {
    /// `[N, 3, H, W]` normalised images → `[N, 1, H, W]` foreground probability.
    fn forward(&self, x: Tensor<4>) -> Tensor<4>;
}

/// The network type a model file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    U2Net,
    IsNet,
    /// Read from a PyTorch state dict (`.safetensors`, `.pth`), or from an ONNX export
    /// through the state dict it holds (`StateDict::from_onnx`).
    BiRefNet,
}

impl Architecture {
    /// IS-Net opens with a stride-2 convolution; U²-Net's are all stride 1.
    fn of(convs: &[onnx::ConvWeights]) -> Self {
        match convs.first() {
            Some(first) if first.stride == 2 => Architecture::IsNet,
            _ => Architecture::U2Net,
        }
    }

    fn build(self, convs: Vec<onnx::ConvWeights>, device: &Device) -> Result<Box<dyn Network>> {
        Ok(match self {
            Architecture::U2Net => Box::new(U2Net::from_convolutions(convs, device)?),
            Architecture::IsNet => Box::new(IsNet::from_convolutions(convs, device)?),
            Architecture::BiRefNet => {
                return Err(Error::InvalidModel(
                    "BiRefNet is read from its PyTorch weights (model.safetensors or .pth), \
                     not from an ONNX export"
                        .into(),
                ));
            }
        })
    }
}

/// The largest absolute difference between two equally long outputs: the unit tests'
/// measure of agreement with a reference.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "outputs of different sizes");
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// The default model's weights, shipped in the binary so it works offline.
const EMBEDDED_U2NETP: &[u8] = include_bytes!("../../../../models/u2netp.onnx");

/// A model rembg distributes: its file, checksum, and the preprocessing it was trained with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelSpec {
    pub name: &'static str,
    pub file: &'static str,
    pub md5: &'static str,
    pub url: &'static str,
    pub licence: &'static str,
    /// Approximate size of the file, for `cutout models list`.
    pub megabytes: u32,
    pub architecture: Architecture,
    pub input_size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ModelSpec {
    /// Memory one image's forward needs beyond the loaded model (activations and the
    /// backend's buffers), for the server's memory budget. u2netp's is measured on flex
    /// (`cutout serve`, 0.26 MP photo, VmHWM): idle 119 MiB, after the first forward 314
    /// (one-time: packed weights, thread pools, allocator arenas, resident from then on),
    /// after batches of 2, 4 and 8 471, 475 and 513: a batch of 8 holds 199 MiB more than
    /// one image does, so 64 MiB per image in flight covers it (stop 24 charged the
    /// one-time 195 MiB to every request, which let only 7 in at once). BiRefNet's follows its measured ~3 GB peak at 1024²
    /// on the CPU (benches/README.md). u2net's and IS-Net's are estimates from their widths
    /// (u2net: 4× u2netp's channels; IS-Net: 64-channel maps at 512²), rounded up. Each
    /// scales with the input's pixels (the 2K BiRefNet: 4×).
    pub fn forward_bytes(&self) -> u64 {
        const MIB: u64 = 1 << 20;
        let (bytes, side) = match (self.architecture, self.name) {
            (Architecture::U2Net, "u2netp") => (64 * MIB, 320),
            (Architecture::U2Net, _) => (768 * MIB, 320),
            (Architecture::IsNet, _) => (1536 * MIB, 1024),
            (Architecture::BiRefNet, _) => (3072 * MIB, 1024),
        };
        let scale = (self.input_size * self.input_size) as f64 / (side * side) as f64;
        (bytes as f64 * scale.max(1.0)) as u64
    }
}

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// IS-Net's, from its repository (DIS) as rembg uses them.
const DIS_MEAN: [f32; 3] = [0.5; 3];
const DIS_STD: [f32; 3] = [1.0; 3];
/// rembg's release folder, where every model it distributes is published.
macro_rules! release_url {
    ($file:literal) => {
        concat!(
            "https://github.com/danielgatis/rembg/releases/download/v0.0.0/",
            $file
        )
    };
}

/// A BiRefNet as rembg distributes it: upstream's checkpoint exported to ONNX, in rembg's
/// release folder, with the md5 rembg's session publishes (MIT, as upstream).
macro_rules! birefnet_onnx {
    ($name:literal, $file:literal, $md5:literal, $megabytes:literal) => {
        ModelSpec {
            name: $name,
            file: concat!($name, ".onnx"),
            md5: $md5,
            url: release_url!($file),
            licence: "MIT",
            megabytes: $megabytes,
            architecture: Architecture::BiRefNet,
            input_size: 1024,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    };
}

/// A BiRefNet that rembg does not distribute, as its author publishes it on the Hugging Face
/// hub: `model.safetensors` (MIT). The hub publishes no checksum: a download is checked by
/// loading it (every tensor's name and shape), and its sha256 is printed so a deployment can
/// pin it.
macro_rules! birefnet_hub {
    ($name:literal, $repository:literal, $megabytes:literal, $input:literal) => {
        ModelSpec {
            name: $name,
            file: concat!($name, ".safetensors"),
            md5: "",
            url: concat!(
                "https://huggingface.co/ZhengPeng7/",
                $repository,
                "/resolve/main/model.safetensors"
            ),
            licence: "MIT",
            megabytes: $megabytes,
            architecture: Architecture::BiRefNet,
            input_size: $input,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    };
}

pub const MODELS: &[ModelSpec] = &[
    ModelSpec {
        name: "u2netp",
        file: "u2netp.onnx",
        md5: "8e83ca70e441ab06c318d82300c84806",
        url: release_url!("u2netp.onnx"),
        licence: "Apache-2.0",
        megabytes: 5,
        architecture: Architecture::U2Net,
        input_size: 320,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    },
    ModelSpec {
        name: "u2net",
        file: "u2net.onnx",
        md5: "60024c5c889badc19c04ad937298a77b",
        url: release_url!("u2net.onnx"),
        licence: "Apache-2.0",
        megabytes: 176,
        architecture: Architecture::U2Net,
        input_size: 320,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    },
    ModelSpec {
        name: "u2net_human_seg",
        file: "u2net_human_seg.onnx",
        md5: "c09ddc2e0104f800e3e1bb4652583d1f",
        url: release_url!("u2net_human_seg.onnx"),
        licence: "Apache-2.0",
        megabytes: 176,
        architecture: Architecture::U2Net,
        input_size: 320,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    },
    ModelSpec {
        name: "silueta",
        file: "silueta.onnx",
        md5: "55e59e0d8062d2f5d013f4725ee84782",
        url: release_url!("silueta.onnx"),
        licence: "Apache-2.0",
        megabytes: 43,
        architecture: Architecture::U2Net,
        input_size: 320,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    },
    ModelSpec {
        name: "isnet-general-use",
        file: "isnet-general-use.onnx",
        md5: "fc16ebd8b0c10d971d3513d564d01e29",
        url: release_url!("isnet-general-use.onnx"),
        licence: "Apache-2.0",
        megabytes: 179,
        architecture: Architecture::IsNet,
        input_size: 1024,
        mean: DIS_MEAN,
        std: DIS_STD,
    },
    // The files and md5s of rembg 2.0.86's sessions (`rembg/sessions/birefnet_*.py`).
    birefnet_onnx!(
        "birefnet-general",
        "BiRefNet-general-epoch_244.onnx",
        "7a35a0141cbbc80de11d9c9a28f52697",
        973
    ),
    birefnet_onnx!(
        "birefnet-lite",
        "BiRefNet-general-bb_swin_v1_tiny-epoch_232.onnx",
        "4fab47adc4ff364be1713e97b7e66334",
        224
    ),
    birefnet_onnx!(
        "birefnet-portrait",
        "BiRefNet-portrait-epoch_150.onnx",
        "c3a64a6abf20250d090cd055f12a3b67",
        973
    ),
    birefnet_onnx!(
        "birefnet-dis",
        "BiRefNet-DIS-epoch_590.onnx",
        "2d4d44102b446f33a4ebb2e56c051f2b",
        973
    ),
    birefnet_onnx!(
        "birefnet-hrsod",
        "BiRefNet-HRSOD_DHU-epoch_115.onnx",
        "c017ade5de8a50ff0fd74d790d268dda",
        973
    ),
    birefnet_onnx!(
        "birefnet-cod",
        "BiRefNet-COD-epoch_125.onnx",
        "f6d0d21ca89d287f17e7afe9f5fd3b45",
        973
    ),
    birefnet_onnx!(
        "birefnet-massive",
        "BiRefNet-massive-TR_DIS5K_TR_TEs-epoch_420.onnx",
        "33e726a2136a3d59eb0fdf613e31e3e9",
        973
    ),
    birefnet_hub!("birefnet-matting", "BiRefNet-matting", 885, 1024),
    birefnet_hub!("birefnet-general-2k", "BiRefNet_HR", 885, 2048),
];

pub const DEFAULT_MODEL: &str = "u2netp";

/// A user's own export (fine-tuned, say) given by path, preprocessed like the architecture's
/// published models, as rembg's `u2net_custom` and `dis_custom` sessions do.
const CUSTOM_U2NET: ModelSpec = ModelSpec {
    name: "u2net_custom",
    file: "",
    md5: "",
    url: "",
    licence: "the file's own",
    megabytes: 0,
    architecture: Architecture::U2Net,
    input_size: 320,
    mean: IMAGENET_MEAN,
    std: IMAGENET_STD,
};
const CUSTOM_ISNET: ModelSpec = ModelSpec {
    name: "isnet_custom",
    file: "",
    md5: "",
    url: "",
    licence: "the file's own",
    megabytes: 0,
    architecture: Architecture::IsNet,
    input_size: 1024,
    mean: DIS_MEAN,
    std: DIS_STD,
};

/// A BiRefNet state dict of the user's own (upstream's `model.safetensors`, a `.pth`
/// checkpoint, or a compatible one such as RMBG-2.0), preprocessed as upstream does: 1024²,
/// ImageNet mean and std.
const CUSTOM_BIREFNET: ModelSpec = ModelSpec {
    name: "birefnet_custom",
    file: "",
    md5: "",
    url: "",
    licence: "the file's own",
    megabytes: 0,
    architecture: Architecture::BiRefNet,
    input_size: 1024,
    mean: IMAGENET_MEAN,
    std: IMAGENET_STD,
};

/// Whether `--model` names a file rather than one of [`MODELS`].
pub fn is_model_file(model: &str) -> bool {
    model.ends_with(".onnx")
        || is_state_dict_file(model)
        || model.contains(std::path::MAIN_SEPARATOR)
}

/// Whether the file is a PyTorch state dict (BiRefNet's format) rather than ONNX.
pub fn is_state_dict_file(model: &str) -> bool {
    let lower = model.to_ascii_lowercase();
    [".safetensors", ".pth", ".pt"]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

pub fn spec(name: &str) -> Result<&'static ModelSpec> {
    MODELS.iter().find(|m| m.name == name).ok_or_else(|| {
        let known = MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ");
        Error::UnknownModel(name.to_string(), known)
    })
}

/// Folders searched for model files: `$CUTOUT_MODELS`, then `~/.cutout/models`.
pub fn model_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("CUTOUT_MODELS") {
        dirs.push(PathBuf::from(dir));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cutout").join("models"));
    }
    dirs
}

/// Where a model's weights can be found without downloading, if anywhere.
#[derive(Debug, Clone, PartialEq)]
pub enum Availability {
    Embedded,
    File(PathBuf),
    Missing,
}

pub fn availability(spec: &ModelSpec) -> Availability {
    if let Some(path) = model_dirs()
        .into_iter()
        .map(|d| d.join(spec.file))
        .find(|p| p.is_file())
    {
        return Availability::File(path);
    }
    if spec.name == DEFAULT_MODEL {
        return Availability::Embedded;
    }
    Availability::Missing
}

/// The model's ONNX bytes: a file in the model folders, the embedded default, or (when
/// `allow_download`) a verified download into the first model folder.
pub fn load_bytes(spec: &ModelSpec, allow_download: bool) -> Result<Vec<u8>> {
    match availability(spec) {
        Availability::File(path) => {
            let bytes = std::fs::read(&path)?;
            verify_md5(spec, &bytes)?;
            Ok(bytes)
        }
        Availability::Embedded => Ok(EMBEDDED_U2NETP.to_vec()),
        Availability::Missing if allow_download => download(spec),
        Availability::Missing => Err(Error::ModelMissing {
            name: spec.name.to_string(),
            file: spec.file.to_string(),
            searched: model_dirs(),
        }),
    }
}

fn verify_md5(spec: &ModelSpec, bytes: &[u8]) -> Result<()> {
    if spec.md5.is_empty() {
        return Ok(());
    }
    let found = download::hex(&Md5::digest(bytes));
    if found != spec.md5 {
        return Err(Error::ChecksumMismatch {
            file: spec.file.to_string(),
            kind: "md5",
            found,
            expected: spec.md5.to_string(),
        });
    }
    Ok(())
}

fn download(spec: &ModelSpec) -> Result<Vec<u8>> {
    let path = pull(spec, None, &mut |_, _| {})?;
    Ok(std::fs::read(path)?)
}

/// Fetches the model's file into the first model folder (resuming a partial download,
/// retrying, checking the published md5 or the `sha256` pinned by the caller) unless a copy
/// is already there; `progress` hears bytes done and the total. A state dict with no
/// published checksum is checked by loading it (every tensor's name and shape). Returns the
/// file's path.
pub fn pull(
    spec: &ModelSpec,
    sha256: Option<&str>,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<PathBuf> {
    if let Availability::File(path) = availability(spec) {
        // Without a published md5 (BiRefNet's 885 MB) there is nothing to read it for.
        if !spec.md5.is_empty() {
            verify_md5(spec, &std::fs::read(&path)?)?;
        }
        return Ok(path);
    }
    let dir = model_dirs()
        .into_iter()
        .next()
        .ok_or_else(|| Error::Download("no model folder (set CUTOUT_MODELS or HOME)".into()))?;
    let (path, _) = fetch_into(spec, spec.url, &dir, sha256, progress)?;
    Ok(path)
}

/// Downloads `spec`'s file from `url` into `dir` and checks it as [`pull`] says; returns its
/// path and digests. (`pull` passes the model table's address; tests a loopback server's.)
pub fn fetch_into(
    spec: &ModelSpec,
    url: &str,
    dir: &Path,
    sha256: Option<&str>,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<(PathBuf, download::Fetched)> {
    let destination = dir.join(spec.file);
    let checksum = match (sha256, spec.md5) {
        (Some(sha256), _) => download::Checksum::Sha256(sha256.to_string()),
        (None, "") => download::Checksum::Unpublished,
        (None, md5) => download::Checksum::Md5(md5.to_string()),
    };
    log::info!("downloading {} from {url}", spec.name);
    let fetched = download::Fetch {
        url,
        destination: &destination,
        checksum: checksum.clone(),
        attempts: 5,
        retry_delay: std::time::Duration::from_secs(2),
        progress,
    }
    .run()?;
    // Without a checksum (the hub's state dicts: every ONNX source publishes an md5), loading
    // it (every tensor's name and shape) is the check.
    if spec.architecture == Architecture::BiRefNet && checksum == download::Checksum::Unpublished {
        let checked = state_dict::StateDict::open(&destination)
            .and_then(|state| birefnet::BiRefNet::load(state, &Device::flex()));
        if let Err(error) = checked {
            std::fs::remove_file(&destination)?;
            return Err(error);
        }
    }
    if checksum == download::Checksum::Unpublished {
        log::info!(
            "{}: sha256 {} (no checksum is published; pin it with --sha256)",
            destination.display(),
            fetched.sha256
        );
    }
    Ok((destination, fetched))
}

/// The largest input (pixels per image) whose batches run side by side on the CPU.
const SIDE_BY_SIDE_MAX_PIXELS: usize = 512 * 512;

/// A loaded model on a burn device, ready to run batches.
#[derive(Debug)]
pub struct Session {
    pub spec: &'static ModelSpec,
    net: Box<dyn Network>,
    device: Device,
    /// The device is burn's wgpu backend, whose tensors cutout's shaders can fill and read
    /// in place (`crate::backend`).
    shares_buffers: bool,
}

impl Session {
    pub fn from_onnx(spec: &'static ModelSpec, onnx: &[u8], device: &Device) -> Result<Self> {
        if spec.architecture == Architecture::BiRefNet {
            return Self::birefnet_onnx(spec, onnx.to_vec(), device);
        }
        let convs = onnx::read_convolutions(onnx)?;
        Self::new(spec, spec.architecture.build(convs, device)?, device)
    }

    /// A BiRefNet exported to ONNX (rembg's files): its state dict recovered from the graph.
    fn birefnet_onnx(spec: &'static ModelSpec, onnx: Vec<u8>, device: &Device) -> Result<Self> {
        let file = match spec.file {
            "" => spec.name,
            file => file,
        };
        let state = state_dict::StateDict::from_onnx(file, onnx)?;
        Self::new(
            spec,
            Box::new(birefnet::BiRefNet::load(state, device)?),
            device,
        )
    }

    /// A model file of the user's own: its architecture is read from the graph, and it is
    /// preprocessed like that architecture's published models.
    pub fn from_custom_onnx(onnx: Vec<u8>, device: &Device) -> Result<Self> {
        let graph = onnx::Graph::parse(&onnx)?;
        // A BiRefNet export keeps its Swin patch embedding under upstream's name.
        if graph
            .initializers
            .contains_key("bb.patch_embed.proj.weight")
        {
            drop(graph);
            return Self::birefnet_onnx(&CUSTOM_BIREFNET, onnx, device);
        }
        let convs = graph.convolutions(&onnx)?;
        let architecture = Architecture::of(&convs);
        let spec = match architecture {
            Architecture::IsNet => &CUSTOM_ISNET,
            Architecture::U2Net | Architecture::BiRefNet => &CUSTOM_U2NET,
        };
        Self::new(spec, architecture.build(convs, device)?, device)
    }

    /// A BiRefNet state dict by path (`.safetensors` or a PyTorch checkpoint).
    pub fn from_state_dict(path: &Path, device: &Device) -> Result<Self> {
        Self::state_dict_as(&CUSTOM_BIREFNET, path, device)
    }

    fn state_dict_as(spec: &'static ModelSpec, path: &Path, device: &Device) -> Result<Self> {
        let state = state_dict::StateDict::open(path)?;
        let net = birefnet::BiRefNet::load(state, device)?;
        Self::new(spec, Box::new(net), device)
    }

    /// One of [`MODELS`]: from the model folders, embedded, or (when `allow_download`)
    /// downloaded and checked.
    pub fn named(spec: &'static ModelSpec, allow_download: bool, device: &Device) -> Result<Self> {
        if spec.architecture != Architecture::BiRefNet {
            return Self::from_onnx(spec, &load_bytes(spec, allow_download)?, device);
        }
        if !is_state_dict_file(spec.file) {
            return Self::birefnet_onnx(spec, load_bytes(spec, allow_download)?, device);
        }
        let path = match availability(spec) {
            Availability::File(path) => path,
            _ if allow_download => pull(spec, None, &mut |_, _| {})?,
            _ => {
                return Err(Error::ModelMissing {
                    name: spec.name.to_string(),
                    file: spec.file.to_string(),
                    searched: model_dirs(),
                });
            }
        };
        Self::state_dict_as(spec, &path, device)
    }

    fn new(spec: &'static ModelSpec, net: Box<dyn Network>, device: &Device) -> Result<Self> {
        Ok(Self {
            spec,
            net,
            device: device.clone(),
            shares_buffers: crate::backend::shares_buffers(device),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the model's tensors live in wgpu buffers cutout's shaders can use.
    pub fn shares_buffers(&self) -> bool {
        self.shares_buffers
    }

    /// The network on a batch already on the model's device: NCHW in, the first output
    /// (N×1×H×W probabilities) out.
    ///
    /// On flex a batch of small images (the U²-Net family's 320²) runs side by side, each
    /// image through the whole network on its own core, instead of every operation splitting
    /// one batch across the cores: each image's activations stay in its core's cache. Per
    /// image, batch 8 went from 0.86× to 1.09× the throughput of batch 1 on two cores
    /// (`benches/remove.rs`). IS-Net's 1024² images go one after another instead: a
    /// 64-channel tensor at its 512² stage is 64 MB, no cache holds it, and two networks at
    /// once only doubled the memory in flight (4 images: 9.2 s side by side, 8.8 s in turn).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [batch, _, h, w] = x.dims();
        if batch == 1 || !rsu::on_flex(&x) {
            return self.net.forward(x);
        }
        let images = x.chunk(batch, 0);
        let masks: Vec<Tensor<4>> = if h * w <= SIDE_BY_SIDE_MAX_PIXELS {
            images
                .into_par_iter()
                .map(|image| self.net.forward(image))
                .collect()
        } else {
            images
                .into_iter()
                .map(|image| self.net.forward(image))
                .collect()
        };
        Tensor::cat(masks, 0)
    }

    /// Runs `batch` normalised images (NCHW, `batch * 3 * size * size` values) and returns
    /// the first output, `batch * size * size` probabilities.
    pub fn predict(&self, input: Vec<f32>, batch: usize, size: [usize; 2]) -> Result<Vec<f32>> {
        let [h, w] = size;
        if input.len() != batch * 3 * h * w {
            return Err(Error::InvalidArgument(format!(
                "model input has {} values, expected {batch}x3x{h}x{w}",
                input.len()
            )));
        }
        let x = Tensor::<4>::from_data(TensorData::new(input, [batch, 3, h, w]), &self.device);
        let y = self.forward(x);
        y.into_data()
            .try_to_vec::<f32>()
            .map_err(|e| Error::InvalidModel(format!("reading the model output: {e:?}")))
    }
}
