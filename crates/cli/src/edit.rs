use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use cutout_core::decode::{DecodeLimits, decode};
use cutout_core::edit::{Editor, Job, photoroom};
use cutout_core::encode::encode_result;
use cutout_core::gpu::Gpu;

#[derive(Args)]
pub struct EditArgs {
    /// The image to edit.
    input: PathBuf,
    /// Output file; its extension picks the format unless export.format is set.
    #[arg(short, long)]
    out: PathBuf,
    /// A PhotoRoom v2 parameter, e.g. `--set shadow.mode=ai.soft --set padding=0.1`.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    settings: Vec<String>,
    /// Background image file (background.imageFile).
    #[arg(long)]
    background: Option<PathBuf>,
    /// Segmentation model: a name from `cutout models list`, or the path of an ONNX export of
    /// U²-Net, IS-Net or BiRefNet, or of BiRefNet weights (`.safetensors`, `.pth`).
    #[arg(long, default_value = cutout_core::model::DEFAULT_MODEL)]
    model: String,
    /// Do not download a missing model.
    #[arg(long)]
    offline: bool,
}

pub fn run(args: EditArgs) -> anyhow::Result<ExitCode> {
    let mut values = Vec::new();
    for setting in &args.settings {
        let Some((name, value)) = setting.split_once('=') else {
            bail!("--set {setting}: expected NAME=VALUE");
        };
        values.push((name.trim().to_string(), value.trim().to_string()));
    }
    let has_format = values.iter().any(|(name, _)| name == "export.format");
    if !has_format && let Some(ext) = args.out.extension().and_then(|e| e.to_str()) {
        values.push(("export.format".into(), ext.to_ascii_lowercase()));
    }
    if args.background.is_some() {
        values.push(("background.imageFile".into(), String::new()));
    }
    let edit = photoroom::parse_v2_edit(values).map_err(|e| anyhow::anyhow!("--set {e}"))?;

    let limits = DecodeLimits::default();
    let read = |path: &PathBuf| -> anyhow::Result<_> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        decode(&bytes, limits).with_context(|| path.display().to_string())
    };
    let image = read(&args.input)?;
    let background = args.background.as_ref().map(read).transpose()?;

    let gpu = Gpu::from_env()?;
    let editor = Editor::load(&gpu, &args.model, !args.offline)?;
    let (format, channels, dpi) = (edit.format, edit.channels, edit.dpi);
    let job = Job {
        image,
        background,
        edit,
    };
    let output = editor.render(std::slice::from_ref(&job)).remove(0)?;
    let encoded = encode_result(&output.image, format, channels, dpi)?;
    std::fs::write(&args.out, encoded.bytes)
        .with_context(|| format!("writing {}", args.out.display()))?;
    Ok(ExitCode::SUCCESS)
}
