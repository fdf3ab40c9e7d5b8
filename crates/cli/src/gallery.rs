use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use cutout_core::decode::{DecodeLimits, decode};
use cutout_core::edit::{Channels, Editor, Job, photoroom};
use cutout_core::gpu::Gpu;
use image::{Rgba, RgbaImage};

#[derive(Args)]
pub struct GalleryArgs {
    /// The photo to render through every operation.
    input: PathBuf,
    /// A second photo, used as a background image.
    #[arg(long)]
    background: PathBuf,
    /// Where to write the contact sheet (PNG).
    #[arg(short, long)]
    out: PathBuf,
}

const TILE: u32 = 320;
const COLUMNS: u32 = 4;

/// Every tile of the sheet, left to right, top to bottom (the README lists them).
const TILES: &[&[(&str, &str)]] = &[
    &[("removeBackground", "false")],
    &[],
    &[
        ("background.color", "FFFFFF"),
        ("shadow.mode", "ai.soft"),
        ("padding", "0.1"),
    ],
    &[
        ("background.color", "EEEEEE"),
        ("shadow.mode", "ai.hard"),
        ("padding", "0.1"),
    ],
    &[
        ("background.color", "F4F1EA"),
        ("shadow.mode", "ai.floating"),
        ("padding", "0.15"),
    ],
    &[
        ("background.blur.mode", "gaussian"),
        ("background.blur.radius", "0.02"),
    ],
    &[
        ("background.blur.mode", "bokeh"),
        ("background.blur.radius", "0.03"),
    ],
    &[
        ("outline.color", "FF3B30"),
        ("outline.width", "0.02"),
        ("background.color", "FFFFFF"),
    ],
    &[
        ("outline.color", "FFD60AEE"),
        ("outline.width", "0.03"),
        ("outline.blurRadius", "0.01"),
        ("background.color", "1C1C1E"),
    ],
    &[("background.imageFile", ""), ("padding", "0.1")],
    &[("background.color", "00000000"), ("scaling", "fill")],
    &[
        ("background.color", "FF0000EE"),
        ("margin", "0.05"),
        ("padding", "0.1"),
        ("verticalAlignment", "bottom"),
    ],
];

pub fn run(args: GalleryArgs) -> anyhow::Result<ExitCode> {
    let read = |path: &PathBuf| -> anyhow::Result<RgbaImage> {
        let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
        Ok(decode(&bytes, DecodeLimits::default())?)
    };
    let image = read(&args.input)?;
    let background = read(&args.background)?;
    let gpu = Gpu::from_env()?;
    let editor = Editor::load(&gpu, cutout_core::model::DEFAULT_MODEL, true)?;

    let size = format!("{TILE}x{TILE}");
    let mut jobs = Vec::new();
    for tile in TILES {
        let mut values: Vec<(String, String)> = tile
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        values.push(("outputSize".into(), size.clone()));
        let edit = photoroom::parse_v2_edit(values)?;
        let needs_background = tile.iter().any(|(k, _)| *k == "background.imageFile");
        jobs.push(Job {
            image: image.clone(),
            background: needs_background.then(|| background.clone()),
            edit,
        });
    }
    let mut matte = jobs[1].edit.clone();
    matte.channels = Channels::Alpha;
    jobs.push(Job {
        image: image.clone(),
        background: None,
        edit: matte,
    });

    let rows = (jobs.len() as u32).div_ceil(COLUMNS);
    let mut sheet = RgbaImage::from_pixel(COLUMNS * TILE, rows * TILE, Rgba([255, 255, 255, 255]));
    for (i, result) in editor.render(&jobs).into_iter().enumerate() {
        let tile = result?.image;
        let (x0, y0) = ((i as u32 % COLUMNS) * TILE, (i as u32 / COLUMNS) * TILE);
        for (x, y, p) in tile.enumerate_pixels() {
            // Transparency shows as a checkerboard.
            let check = if ((x / 16) + (y / 16)) % 2 == 0 {
                204.0
            } else {
                255.0
            };
            let a = p.0[3] as f32 / 255.0;
            let over = |c: u8| (c as f32 * a + check * (1.0 - a)).round() as u8;
            sheet.put_pixel(
                x0 + x,
                y0 + y,
                Rgba([over(p.0[0]), over(p.0[1]), over(p.0[2]), 255]),
            );
        }
    }
    sheet
        .save(&args.out)
        .with_context(|| args.out.display().to_string())?;
    eprintln!("wrote {} ({} tiles)", args.out.display(), jobs.len());
    Ok(ExitCode::SUCCESS)
}
