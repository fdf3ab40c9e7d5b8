//! `cutout`: background removal from the command line.

mod edit;
mod gallery;
mod remove;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cutout",
    version,
    about = "Self-hosted, GPU-native background removal and product-photo editing"
)]
struct Cli {
    /// How log lines are written to stderr: `text` for people, `json` (one object per line)
    /// for log collectors. RUST_LOG sets what is logged (default `info`; e.g.
    /// `info,cutout::request=warn` drops the per-request lines).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr through `tracing`; the `log` records of cutout's engine and dependencies
/// are bridged into the same lines.
fn init_logs(format: LogFormat) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|text| match text.parse::<Targets>() {
            Ok(targets) => Some(targets),
            Err(e) => {
                eprintln!("warning: RUST_LOG={text:?} is not a log filter ({e}); using info");
                None
            }
        })
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer.json().flatten_event(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .init();
}

#[derive(Subcommand)]
enum Command {
    /// Remove the background of images or whole folders.
    Remove(remove::RemoveArgs),
    /// Edit one image with PhotoRoom v2 parameters (background, shadow, outline, layout).
    Edit(edit::EditArgs),
    /// Render one photo through every edit operation into a contact sheet.
    Gallery(gallery::GalleryArgs),
    /// Serve the PhotoRoom- and remove.bg-compatible HTTP APIs.
    Serve(serve::ServeArgs),
    /// Manage API keys (stored hashed).
    Keys {
        #[command(subcommand)]
        command: serve::KeysCommand,
    },
    /// Manage segmentation models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// List the models and whether each is present.
    List,
    /// Download a model ahead of time (resumable; checked against its published md5, or by
    /// loading it where none is published).
    Pull {
        /// A name from `cutout models list`.
        name: String,
        /// The sha256 the file must have, for models whose source publishes no checksum
        /// (the BiRefNet weights on the Hugging Face hub); printed after a first download.
        #[arg(long)]
        sha256: Option<String>,
    },
}

fn main() -> ExitCode {
    cutout_core::alloc::keep_large_buffers();
    // SAFETY: the first lines of `main`: no other thread exists yet.
    unsafe { cutout_core::gpu::quiet_device_select_layer() };
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let result = match cli.command {
        Command::Remove(args) => remove::run(args),
        Command::Edit(args) => edit::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Gallery(args) => gallery::run(args),
        Command::Keys { command } => serve::keys(command),
        Command::Models {
            command: ModelsCommand::List,
        } => list_models(),
        Command::Models {
            command: ModelsCommand::Pull { name, sha256 },
        } => pull_model(&name, sha256.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn list_models() -> anyhow::Result<ExitCode> {
    use cutout_core::model::{self, Availability};
    println!(
        "{:<20} {:<10} {:>7} {:<12} {:<11} where",
        "model", "input", "size", "format", "licence"
    );
    for spec in model::MODELS {
        let place = match model::availability(spec) {
            Availability::Embedded => "embedded (default)".to_string(),
            Availability::File(path) => path.display().to_string(),
            Availability::Missing => format!("missing (downloads from {})", spec.url),
        };
        let size = format!("{0}x{0}", spec.input_size);
        let megabytes = format!("{} MB", spec.megabytes);
        let format = spec.file.rsplit('.').next().unwrap_or_default();
        println!(
            "{:<20} {:<10} {megabytes:>7} {format:<12} {:<11} {place}",
            spec.name, size, spec.licence
        );
    }
    println!("model folders searched: {:?}", model::model_dirs());
    Ok(ExitCode::SUCCESS)
}

fn pull_model(name: &str, sha256: Option<&str>) -> anyhow::Result<ExitCode> {
    use indicatif::{ProgressBar, ProgressStyle};
    let spec = cutout_core::model::spec(name)?;
    let bar = ProgressBar::new(0).with_style(ProgressStyle::with_template(
        "{msg} {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )?);
    bar.set_message(spec.name);
    let path = cutout_core::model::pull(spec, sha256, &mut |done, total| {
        if let Some(total) = total {
            bar.set_length(total);
        }
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    let checked = match (sha256, spec.md5) {
        (Some(sha256), _) => format!("sha256 {sha256} checked"),
        (None, "") => "every tensor checked; no checksum published".to_string(),
        (None, md5) => format!("md5 {md5} checked"),
    };
    println!("{}: {} ({checked})", spec.name, path.display());
    Ok(ExitCode::SUCCESS)
}
