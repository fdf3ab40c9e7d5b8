use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use cutout_core::edit::Editor;
use cutout_core::gpu::Gpu;
use cutout_server::{Config, KeyStore, keys};

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Segmentation model: a name from `cutout models list`, or the path of an ONNX export of
    /// U²-Net, IS-Net or BiRefNet, or of BiRefNet weights (`.safetensors`, `.pth`).
    #[arg(long, default_value = cutout_core::model::DEFAULT_MODEL)]
    model: String,
    /// Most images segmented in one batch.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Milliseconds a request waits for others to batch with.
    #[arg(long, default_value_t = 5)]
    max_wait_ms: u64,
    /// Jobs that may wait in the queue before requests get 503.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Allow URLs that resolve to loopback or private addresses (local testing only).
    #[arg(long)]
    allow_private_urls: bool,
    /// Largest image accepted, in megapixels.
    #[arg(long, default_value_t = 25.0)]
    max_megapixels: f64,
    /// API key file (hashes); without keys the server accepts every request.
    #[arg(long)]
    keys: Option<PathBuf>,
    /// Credits per key and calendar month, enforced (402) and reported by the account
    /// endpoints; usage is kept in KEYS.usage.
    #[arg(long, default_value_t = 10_000.0)]
    credits: f64,
    /// Megapixel images per minute and key, as remove.bg counts them (0: no limit); 429 with
    /// Retry-After beyond it. Applies only with keys.
    #[arg(long, default_value_t = 500)]
    rate_limit: u32,
    /// Do not download a missing model.
    #[arg(long)]
    offline: bool,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let keys_path = args.keys.unwrap_or_else(keys::default_path);
    let keys = KeyStore::load(&keys_path)?;
    if keys.is_open() {
        log::warn!(
            "no API keys in {}: every request is accepted (create one with `cutout keys create NAME`)",
            keys_path.display()
        );
    }
    let gpu = Gpu::from_env()?;
    let editor = Editor::load(&gpu, &args.model, !args.offline)?;
    let mut config = Config {
        keys,
        monthly_credits: args.credits,
        rate_limit: args.rate_limit,
        ..Config::default()
    };
    config.batching.max_batch = args.max_batch.max(1);
    config.batching.max_wait = Duration::from_millis(args.max_wait_ms);
    config.batching.capacity = args.queue.max(1);
    config.fetch.allow_private = args.allow_private_urls;
    config.decode.max_pixels = (args.max_megapixels * 1e6) as u64;

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let server = cutout_server::start(args.addr, editor, config).await?;
        log::info!("listening on http://{}", server.addr);
        shutdown_signal().await;
        log::info!("shutting down: finishing in-flight requests");
        server.shutdown().await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it (only its hash is stored).
    Create {
        name: String,
        /// A sandbox key: free, watermarked results.
        #[arg(long)]
        sandbox: bool,
        #[arg(long)]
        keys: Option<PathBuf>,
    },
    /// List the keys by name.
    List {
        #[arg(long)]
        keys: Option<PathBuf>,
    },
    /// Revoke a key by name.
    Revoke {
        name: String,
        #[arg(long)]
        keys: Option<PathBuf>,
    },
}

pub fn keys(command: KeysCommand) -> anyhow::Result<ExitCode> {
    let path = |given: Option<PathBuf>| given.unwrap_or_else(keys::default_path);
    match command {
        KeysCommand::Create {
            name,
            sandbox,
            keys,
        } => {
            let path = path(keys);
            let key = keys::create(&path, &name, sandbox)?;
            eprintln!("created key '{name}' in {} (shown once):", path.display());
            println!("{key}");
        }
        KeysCommand::List { keys } => {
            for key in KeyStore::load(&path(keys))?.keys() {
                let kind = if key.sandbox { "sandbox" } else { "live" };
                println!("{} {kind}", key.name);
            }
        }
        KeysCommand::Revoke { name, keys } => {
            if !keys::revoke(&path(keys), &name)? {
                anyhow::bail!("no key named '{name}'");
            }
            eprintln!("revoked '{name}'");
        }
    }
    Ok(ExitCode::SUCCESS)
}
