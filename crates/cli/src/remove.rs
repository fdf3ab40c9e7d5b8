use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use cutout_core::decode::{DecodeLimits, decode};
use cutout_core::edit::{Channels, Format};
use cutout_core::encode::{OutputFormat, encode, encode_result};
use cutout_core::gpu::Gpu;
use cutout_core::ops::{CutoutMode, Refinement};
use cutout_core::remove::Remover;
use cutout_core::timing::{Stage, StageTimes};
use image::RgbaImage;
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
    /// Refine the mask's edges with the photo as guide (a guided filter; see the README).
    /// Without it the mask is upsampled as rembg does.
    #[arg(long)]
    refine: bool,
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

struct Job {
    input: PathBuf,
    output: PathBuf,
}

pub fn run(args: RemoveArgs) -> anyhow::Result<ExitCode> {
    let format: OutputFormat = args.format.parse()?;
    let background = args.bg_color.as_deref().map(parse_color).transpose()?;
    let mode = if args.only_mask {
        CutoutMode::MaskOnly
    } else {
        CutoutMode::Cutout { background }
    };
    let jobs = plan(&args, format)?;

    let gpu = Gpu::from_env()?;
    let mut remover = Remover::load(&gpu, &args.model, !args.offline)?;
    if args.refine {
        remover = remover.refined(Refinement::default());
    }

    let progress = ProgressBar::new(jobs.len() as u64);
    if jobs.len() > 1 {
        progress.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed_precise} eta {eta} {msg}")
                .expect("valid template"),
        );
    } else {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut failures = 0;
    let mut fail = |job: &Job, error: anyhow::Error| {
        failures += 1;
        progress.suspend(|| eprintln!("{}: {error:#}", job.input.display()));
    };
    let mut timings = StageTimes::default();
    for chunk in jobs.chunks(usize::from(args.batch)) {
        let start = Instant::now();
        let mut batch = Vec::with_capacity(chunk.len());
        for job in chunk {
            let decoded = std::fs::read(&job.input)
                .map_err(anyhow::Error::from)
                .and_then(|bytes| Ok(decode(&bytes, DecodeLimits::default())?));
            match decoded {
                Ok(image) => batch.push((job, image)),
                Err(error) => fail(job, error),
            }
        }
        timings.add(Stage::Decode, start.elapsed());
        let (batch_jobs, images): (Vec<&Job>, Vec<_>) = batch.into_iter().unzip();
        if !images.is_empty() {
            match remover.remove(&images, mode) {
                Ok((results, spent)) => {
                    timings += spent;
                    let start = Instant::now();
                    for (job, result) in batch_jobs.into_iter().zip(results) {
                        if let Err(error) = write_result(job, &result, format, args.only_mask) {
                            fail(job, error);
                        }
                    }
                    timings.add(Stage::Encode, start.elapsed());
                }
                Err(error) => {
                    let error = anyhow::Error::from(error);
                    for job in batch_jobs {
                        fail(job, anyhow::anyhow!("{error:#}"));
                    }
                }
            }
        }
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();

    if args.timings {
        eprintln!(
            "{} images in {:.2?} (read+decode, encode+write included): {timings}",
            jobs.len(),
            timings.sum()
        );
    }
    if failures > 0 {
        eprintln!("{failures} of {} images failed", jobs.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// A mask (`--only-mask`) is written as rembg, remove.bg and PhotoRoom's `channels=alpha`
/// write it: an 8-bit greyscale PNG (JPEG and WebP are grey RGB).
fn write_result(
    job: &Job,
    result: &RgbaImage,
    format: OutputFormat,
    only_mask: bool,
) -> anyhow::Result<()> {
    let encoded = match (format, only_mask) {
        (OutputFormat::Png, true) => {
            encode_result(result, Format::Png, Channels::Alpha, None)?.bytes
        }
        _ => encode(result, format)?,
    };
    if let Some(parent) = job.output.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&job.output, encoded)?;
    Ok(())
}

fn plan(args: &RemoveArgs, format: OutputFormat) -> anyhow::Result<Vec<Job>> {
    let mut jobs = Vec::new();
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
                    let output = base.join(relative).with_extension(format.extension());
                    jobs.push(Job {
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
            .with_extension(format.extension());
            jobs.push(Job {
                input: input.clone(),
                output,
            });
        } else {
            bail!("{}: no such file or folder", input.display());
        }
    }
    if args.out.is_some() && jobs.len() != 1 {
        bail!("-o/--out takes a single input image; use --out-dir for several");
    }
    Ok(jobs)
}

fn is_image(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    matches!(
        ext.to_ascii_lowercase().as_str(),
        "jpg" | "jpeg" | "png" | "webp"
    )
}

/// A colour as the APIs write it (hex with or without `#`, `rgb()`, or a name), 0..1.
fn parse_color(text: &str) -> anyhow::Result<[f32; 4]> {
    cutout_core::edit::Color::parse(text)
        .map(|c| c.to_f32())
        .with_context(|| {
            format!("'{text}' is not a colour: use RRGGBB, RRGGBBAA or a name like white")
        })
}
