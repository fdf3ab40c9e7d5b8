use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use cutout_core::decode::{DecodeLimits, decode};
use cutout_core::edit::{Background, Channels, Color, Edit, Editor, Fill, Format, Job};
use cutout_core::encode::encode_result;
use cutout_core::gpu::Gpu;
use cutout_core::timing::{Stage, StageTimes};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args)]
pub struct RemoveArgs {
    /// Image files or folders (searched recursively for .jpg, .jpeg, .png, .webp).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output file (only with a single input file).
    #[arg(short, long, conflicts_with = "out_dir")]
    out: Option<PathBuf>,
    /// Output folder; folders keep their relative layout inside it.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Segmentation model: a name from `cutout models list`, or the path of an ONNX export of
    /// U²-Net, IS-Net or BiRefNet (preprocessed like the published models of its
    /// architecture), or of BiRefNet weights (`.safetensors`, `.pth`).
    #[arg(long, default_value = cutout_core::model::DEFAULT_MODEL)]
    model: String,
    /// Write the mask instead of the cut-out.
    #[arg(long)]
    only_mask: bool,
    /// Background colour instead of transparency: hex (RRGGBB or RRGGBBAA) or a name.
    #[arg(long)]
    bg_color: Option<String>,
    /// Output format.
    #[arg(long, default_value = "png")]
    format: String,
    /// Upsample the model's mask as rembg does, without refining its edges with the photo
    /// as guide (the guided filter the HTTP APIs also apply; see the README).
    #[arg(long)]
    no_refine: bool,
    /// Do not download a missing model.
    #[arg(long)]
    offline: bool,
    /// Print where the time went.
    #[arg(long)]
    timings: bool,
    /// Images per model forward. On the CPU the images of a batch run side by side, one per
    /// core; on a GPU they share one forward.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    batch: u16,
}

struct File {
    input: PathBuf,
    output: PathBuf,
}

/// `cutout remove` is the edit `POST /v1/segment` runs, with the same defaults: the
/// subject on transparency (or on `--bg-color`), or its mask (`--only-mask`).
fn edit(args: &RemoveArgs, format: Format) -> anyhow::Result<Edit> {
    let fill = match args.bg_color.as_deref() {
        Some(text) => Fill::Color(parse_color(text)?),
        None => Fill::Transparent,
    };
    Ok(Edit {
        refine: !args.no_refine,
        background: Background { fill, blur: None },
        channels: if args.only_mask {
            Channels::Alpha
        } else {
            Channels::Rgba
        },
        format,
        ..Edit::default()
    })
}

pub fn run(args: RemoveArgs) -> anyhow::Result<ExitCode> {
    let (format, extension) = output_format(&args.format)?;
    let edit = edit(&args, format)?;
    let files = plan(&args, extension)?;

    let gpu = Gpu::from_env()?;
    let editor = Editor::load(&gpu, &args.model, !args.offline)?;

    let progress = ProgressBar::new(files.len() as u64);
    if files.len() > 1 {
        progress.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed_precise} eta {eta} {msg}")
                .expect("valid template"),
        );
    } else {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut failures = 0;
    let mut fail = |file: &File, error: anyhow::Error| {
        failures += 1;
        progress.suspend(|| eprintln!("{}: {error:#}", file.input.display()));
    };
    let mut timings = StageTimes::default();
    for chunk in files.chunks(usize::from(args.batch)) {
        let start = Instant::now();
        let mut batch = Vec::with_capacity(chunk.len());
        let mut jobs = Vec::with_capacity(chunk.len());
        for file in chunk {
            let decoded = std::fs::read(&file.input)
                .map_err(anyhow::Error::from)
                .and_then(|bytes| Ok(decode(&bytes, DecodeLimits::default())?));
            match decoded {
                Ok(image) => {
                    batch.push(file);
                    jobs.push(Job {
                        image,
                        background: None,
                        edit: edit.clone(),
                    });
                }
                Err(error) => fail(file, error),
            }
        }
        timings.add(Stage::Decode, start.elapsed());
        let segmented = editor.segment(&jobs);
        timings += segmented.timings();
        // With the operations on the device the jobs of a batch share its effects and
        // readback (counted once per batch); on the host each job passes them alone.
        let shared = !editor.ops().on_host();
        let mut batch_effects = None;
        editor.finish_each(&jobs, segmented, |i, output| {
            let written = output.map_err(anyhow::Error::from).and_then(|output| {
                if shared {
                    batch_effects.get_or_insert(output.timings);
                } else {
                    timings.add(Stage::Effects, output.timings.get(Stage::Effects));
                    timings.add(Stage::Readback, output.timings.get(Stage::Readback));
                }
                let start = Instant::now();
                let encoded = encode_result(&output.image, edit.format, edit.channels, None)?;
                let file = batch[i];
                if let Some(parent) = file.output.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&file.output, encoded.bytes)?;
                timings.add(Stage::Encode, start.elapsed());
                Ok(())
            });
            if let Err(error) = written {
                fail(batch[i], error);
            }
        });
        if let Some(batch) = batch_effects {
            timings.add(Stage::Effects, batch.get(Stage::Effects));
            timings.add(Stage::Readback, batch.get(Stage::Readback));
        }
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();

    if args.timings {
        eprintln!(
            "{} images in {:.2?} (read+decode, encode+write included): {timings}",
            files.len(),
            timings.sum()
        );
    }
    if failures > 0 {
        eprintln!("{failures} of {} images failed", files.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The output format and its file extension. A mask (`--only-mask`) is written as rembg,
/// remove.bg and PhotoRoom's `channels=alpha` write it: an 8-bit greyscale PNG (JPEG and
/// WebP are grey RGB).
fn output_format(text: &str) -> anyhow::Result<(Format, &'static str)> {
    Ok(match text.to_ascii_lowercase().as_str() {
        "png" => (Format::Png, "png"),
        "jpg" | "jpeg" => (Format::Jpeg, "jpg"),
        "webp" => (Format::WebP, "webp"),
        other => bail!("--format must be png, jpg or webp, not '{other}'"),
    })
}

fn plan(args: &RemoveArgs, extension: &str) -> anyhow::Result<Vec<File>> {
    let mut files = Vec::new();
    for input in &args.inputs {
        if input.is_dir() {
            for entry in walkdir::WalkDir::new(input).sort_by_file_name() {
                let entry = entry?;
                if entry.file_type().is_file() && is_image(entry.path()) {
                    let relative = entry.path().strip_prefix(input)?;
                    let base = args
                        .out_dir
                        .clone()
                        .unwrap_or_else(|| input.with_extension("cutout"));
                    let output = base.join(relative).with_extension(extension);
                    files.push(File {
                        input: entry.path().to_path_buf(),
                        output,
                    });
                }
            }
        } else if input.is_file() {
            let output = match (&args.out, &args.out_dir) {
                (Some(out), _) => out.clone(),
                (None, Some(dir)) => dir.join(input.file_name().context("input has no file name")?),
                (None, None) => {
                    let stem = input.file_stem().context("input has no file name")?;
                    input.with_file_name(format!("{}.cutout", stem.to_string_lossy()))
                }
            }
            .with_extension(extension);
            files.push(File {
                input: input.clone(),
                output,
            });
        } else {
            bail!("{}: no such file or folder", input.display());
        }
    }
    if args.out.is_some() && files.len() != 1 {
        bail!("-o/--out takes a single input image; use --out-dir for several");
    }
    Ok(files)
}

fn is_image(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    matches!(
        ext.to_ascii_lowercase().as_str(),
        "jpg" | "jpeg" | "png" | "webp"
    )
}

/// A colour as the APIs write it (hex with or without `#`, `rgb()`, or a name).
fn parse_color(text: &str) -> anyhow::Result<Color> {
    Color::parse(text).with_context(|| {
        format!("'{text}' is not a colour: use RRGGBB, RRGGBBAA or a name like white")
    })
}
