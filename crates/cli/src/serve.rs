use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use cutout_core::edit::Editor;
use cutout_core::gpu::Gpu;
use cutout_server::accounts::Accounts;
use cutout_server::store::{self, Store};
use cutout_server::{Config, keys};

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Segmentation model: a name from `cutout models list`, or the path of an ONNX export of
    /// U²-Net, IS-Net or BiRefNet, or of BiRefNet weights (`.safetensors`, `.pth`).
    #[arg(long, default_value = cutout_core::model::DEFAULT_MODEL)]
    model: String,
    /// Most images segmented in one batch [default: 8 on a GPU; 1 where the adapter is a CPU,
    /// where batching was measured to gain nothing and cost memory (benches/README.md, load
    /// run 8)].
    #[arg(long)]
    max_batch: Option<usize>,
    /// Most input megapixels segmented in one batch (a larger photo is a batch of its own).
    #[arg(long, default_value_t = 25.0)]
    max_batch_megapixels: f64,
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
    /// The accounts database: `sqlite://PATH` (default: cutout.db in the data directory) or
    /// `postgres://USER@HOST/DATABASE` to share keys, credits and rate limits between replicas.
    #[arg(long)]
    store: Option<String>,
    /// Serve every request without a key, uncounted. Refused on a non-loopback address
    /// unless --allow-public-no-auth is given too.
    #[arg(long)]
    no_auth: bool,
    /// Allow --no-auth on an address other hosts can reach.
    #[arg(long)]
    allow_public_no_auth: bool,
    /// Credits per calendar month for keys created without their own --credits, enforced
    /// (402) and reported by the account endpoints.
    #[arg(long, default_value_t = 10_000.0)]
    credits: f64,
    /// Megapixel images per minute for keys without their own --rate-limit, as remove.bg
    /// counts them (0: no limit); 429 with Retry-After beyond it.
    #[arg(long, default_value_t = 500)]
    rate_limit: u32,
    /// Seconds a credit hold outlives its replica's last renewal (a replica that dies
    /// mid-request gives its holds back after this).
    #[arg(long, default_value_t = 120, hide = true)]
    lease_seconds: u64,
    /// Seconds a client has to send a request's headers before its connection is closed.
    #[arg(long, default_value_t = 30)]
    header_timeout: u64,
    /// Seconds a client may pause while sending a body (then 408).
    #[arg(long, default_value_t = 30)]
    body_timeout: u64,
    /// Bytes per second a body must average after its first 10 s (then 408).
    #[arg(long, default_value_t = 1024)]
    min_body_rate: u64,
    /// Connections open at once; more are answered 503 with Retry-After and closed.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Most headers in one request (more: 431).
    #[arg(long, default_value_t = 100)]
    max_headers: usize,
    /// MiB that all requests in flight may hold: each its body, then 32 bytes per pixel of
    /// its image (and of what its canvas can add) plus the model's forward (u2netp: 64 MiB).
    /// Requests that do not fit wait
    /// up to --admission-wait seconds, then get 503 with Retry-After.
    #[arg(long, default_value_t = 1536)]
    max_inflight_memory: u64,
    /// Seconds a request waits for memory before it gets 503.
    #[arg(long, default_value_t = 30)]
    admission_wait: u64,
    /// Do not download a missing model.
    #[arg(long)]
    offline: bool,
}

/// `$XDG_DATA_HOME/cutout/cutout.db`, else `~/.local/share/cutout/cutout.db`.
fn default_store() -> String {
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
            home.join(".local").join("share")
        });
    format!(
        "sqlite://{}",
        data.join("cutout").join("cutout.db").display()
    )
}

fn open_store(
    runtime: &tokio::runtime::Runtime,
    url: Option<String>,
) -> anyhow::Result<Arc<dyn Store>> {
    let url = url.unwrap_or_else(default_store);
    let store = runtime
        .block_on(store::open(&url))
        .with_context(|| format!("opening the accounts store {url}"))?;
    Ok(store)
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    if args.no_auth && !args.addr.ip().is_loopback() && !args.allow_public_no_auth {
        anyhow::bail!(
            "--no-auth on {} would let anyone who reaches it use this server: listen on \
             127.0.0.1, or add --allow-public-no-auth",
            args.addr
        );
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let store = if args.no_auth {
        log::warn!("--no-auth: every request is accepted and nothing is counted");
        None
    } else {
        let store = open_store(&runtime, args.store)?;
        log::info!("accounts: {}", store.describe());
        if runtime.block_on(store.keys())?.is_empty() {
            let mut admin = store::NewKey::named("admin");
            admin.admin = true;
            let key = keys::generate(false);
            runtime.block_on(store.create_key(&admin, &keys::hash(&key), unix_now()))?;
            // To the terminal only, never into the log.
            println!("No API keys yet: created the admin key 'admin' (shown once):\n{key}");
        }
        Some(store)
    };
    let gpu = Gpu::from_env()?;
    let editor = Editor::load(&gpu, &args.model, !args.offline)?;
    let mut config = Config {
        store,
        monthly_credits: args.credits,
        rate_limit: args.rate_limit,
        lease: Duration::from_secs(args.lease_seconds.max(3)),
        header_read_timeout: Duration::from_secs(args.header_timeout.max(1)),
        max_headers: args.max_headers.max(1),
        body_pace: cutout_server::body::Pace {
            idle: Duration::from_secs(args.body_timeout.max(1)),
            min_rate: args.min_body_rate,
            grace: Duration::from_secs(10),
        },
        max_connections: args.max_connections.max(1),
        max_inflight_memory: args.max_inflight_memory.max(1) << 20,
        admission_wait: Duration::from_secs(args.admission_wait),
        ..Config::default()
    };
    let max_batch = args
        .max_batch
        .unwrap_or(if gpu.is_hardware() { 8 } else { 1 })
        .max(1);
    log::info!("batches of at most {max_batch} images");
    config.batching.max_batch = max_batch;
    config.batching.max_batch_pixels = (args.max_batch_megapixels * 1e6) as u64;
    config.batching.max_wait = Duration::from_millis(args.max_wait_ms);
    config.batching.capacity = args.queue.max(1);
    config.fetch.allow_private = args.allow_private_urls;
    config.decode.max_pixels = (args.max_megapixels * 1e6) as u64;
    // The model file is cached (or embedded) by now: reopening never downloads.
    let model = args.model.clone();
    config.reopen = Some(std::sync::Arc::new(move || {
        Editor::load(&Gpu::from_env()?, &model, false)
    }));

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

fn unix_now() -> i64 {
    cutout_server::unix_now() as i64
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
    /// Create a key and print it once (only its hash is stored).
    Create {
        name: String,
        /// Its monthly credits (default: the server's --credits).
        #[arg(long)]
        credits: Option<f64>,
        #[arg(long, value_parser = ["basic", "plus"], default_value = "basic")]
        plan: String,
        /// A sandbox key: free, watermarked results, 1,000 calls a month.
        #[arg(long)]
        sandbox: bool,
        /// May read the dashboard and metrics.
        #[arg(long)]
        admin: bool,
        /// Its megapixel images per minute (default: the server's --rate-limit).
        #[arg(long)]
        rate_limit: Option<u32>,
        #[arg(long)]
        store: Option<String>,
    },
    /// List the keys: plan, balance, use this month, created, last used.
    List {
        /// Monthly credits of keys without their own (as the server's --credits).
        #[arg(long, default_value_t = 10_000.0)]
        credits: f64,
        #[arg(long)]
        store: Option<String>,
    },
    /// Revoke a key by name: refused by every replica from its next request.
    Revoke {
        name: String,
        #[arg(long)]
        store: Option<String>,
    },
    /// Add pay-as-you-go credits (they do not expire; spent after the month's allowance).
    AddCredits {
        name: String,
        credits: f64,
        #[arg(long)]
        store: Option<String>,
    },
    /// Import the keys (and this month's usage) of an earlier version's flat KEYS file.
    Import {
        file: PathBuf,
        #[arg(long)]
        store: Option<String>,
    },
    /// A key's usage per day.
    Usage {
        name: String,
        /// First day, YYYY-MM-DD (default: the first of this month).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        store: Option<String>,
    },
}

pub fn keys(command: KeysCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    let now = unix_now();
    match command {
        KeysCommand::Create {
            name,
            credits,
            plan,
            sandbox,
            admin,
            rate_limit,
            store,
        } => {
            if name.is_empty() || name.contains(char::is_whitespace) {
                anyhow::bail!("a key name must be one word");
            }
            let store = open_store(&runtime, store)?;
            let new = store::NewKey {
                plan: store::Plan::parse(&plan).context("plan")?,
                sandbox,
                admin,
                monthly_millicredits: credits.map(store::millicredits),
                rate_limit,
                ..store::NewKey::named(&name)
            };
            let key = keys::generate(sandbox);
            runtime.block_on(store.create_key(&new, &keys::hash(&key), now))?;
            eprintln!("created key '{name}' in {} (shown once):", store.describe());
            println!("{key}");
        }
        KeysCommand::List { credits, store } => {
            let store = open_store(&runtime, store)?;
            let accounts = Accounts::new(
                store.clone(),
                credits,
                0,
                Duration::from_secs(120),
                cutout_server::system_clock(),
            );
            println!(
                "{:<16} {:<6} {:<8} {:>12} {:>12} {:>10} {:<20} {:<20}",
                "name", "plan", "kind", "balance", "used/month", "payg", "created", "last used"
            );
            for key in runtime.block_on(store.keys())? {
                let balance = runtime.block_on(accounts.balance(&key))?;
                let kind = match (key.sandbox, key.admin) {
                    (true, _) => "sandbox",
                    (false, true) => "admin",
                    _ => "live",
                };
                println!(
                    "{:<16} {:<6} {kind:<8} {:>12} {:>12} {:>10} {:<20} {:<20}",
                    key.name,
                    key.plan.as_str(),
                    store::credits(balance.available()),
                    store::credits(balance.subscription_used),
                    store::credits(balance.payg_left()),
                    date_time(key.created_at),
                    key.last_used_at.map_or("never".into(), date_time),
                );
            }
        }
        KeysCommand::Revoke { name, store } => {
            let store = open_store(&runtime, store)?;
            if !runtime.block_on(store.revoke(&name, now))? {
                anyhow::bail!("no key named '{name}'");
            }
            eprintln!("revoked '{name}'");
        }
        KeysCommand::AddCredits {
            name,
            credits,
            store,
        } => {
            if !(credits > 0.0 && credits.is_finite()) {
                anyhow::bail!("credits must be a positive number");
            }
            let store = open_store(&runtime, store)?;
            if !runtime.block_on(store.add_credits(&name, store::millicredits(credits)))? {
                anyhow::bail!("no key named '{name}'");
            }
            eprintln!("added {credits} pay-as-you-go credits to '{name}'");
        }
        KeysCommand::Import { file, store } => {
            let store = open_store(&runtime, store)?;
            let month = store::month_of(now);
            let flat = keys::read_flat(&file, &month)
                .with_context(|| format!("reading {}", file.display()))?;
            runtime.block_on(import(&*store, &flat, now, &month))?;
            eprintln!(
                "imported {} keys from {} into {}",
                flat.len(),
                file.display(),
                store.describe()
            );
        }
        KeysCommand::Usage { name, since, store } => {
            let store = open_store(&runtime, store)?;
            let key = runtime
                .block_on(store.key_by_name(&name))?
                .with_context(|| format!("no key named '{name}'"))?;
            let since = match since {
                Some(day) => day_start(&day)?,
                None => day_start(&format!("{}-01", store::month_of(now)))?,
            };
            println!(
                "{:<10} {:>8} {:>8} {:>8} {:>10}",
                "day", "requests", "images", "errors", "credits"
            );
            for day in runtime.block_on(store.usage_by_day(key.id, since))? {
                println!(
                    "{:<10} {:>8} {:>8} {:>8} {:>10}",
                    &date_time(day.day * 86_400)[..10],
                    day.requests,
                    day.images,
                    day.errors,
                    store::credits(day.millicredits)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Stores the flat file's keys under their existing hashes, with this month's usage charged
/// (as one history row named `import`), so no deployment loses a key or a credit.
async fn import(
    store: &dyn Store,
    flat: &[keys::FlatKey],
    now: i64,
    month: &str,
) -> anyhow::Result<()> {
    for old in flat {
        let new = store::NewKey {
            sandbox: old.sandbox,
            ..store::NewKey::named(&old.name)
        };
        let key = store.create_key(&new, &old.hash, now).await?;
        let used = store::millicredits(old.used_this_month);
        if used > 0 {
            let hold = store::Hold {
                key_id: key.id,
                millicredits: used,
                month,
                allowance: used,
                now,
                expires_at: now + 60,
                replica: "import",
                daily_calls: None,
            };
            let id = store
                .reserve(&hold)
                .await?
                .context("holding imported usage")?;
            let usage = store::UsageRow {
                key_id: key.id,
                at: now,
                endpoint: "import",
                megapixels: 0.0,
                millicredits: used,
                status: 200,
                duration_ms: 0,
            };
            store.commit(id, &usage).await?;
        }
    }
    Ok(())
}

/// `YYYY-MM-DD` as Unix seconds at its start (UTC).
fn day_start(day: &str) -> anyhow::Result<i64> {
    let parts: Vec<i64> = day
        .split('-')
        .map(|p| p.parse::<i64>())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("'{day}' is not a date YYYY-MM-DD"))?;
    let [year, month, day_of_month] = parts[..] else {
        anyhow::bail!("'{day}' is not a date YYYY-MM-DD");
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day_of_month) {
        anyhow::bail!("'{day}' is not a date YYYY-MM-DD");
    }
    // Howard Hinnant's days-from-civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day_of_month - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Ok((era * 146_097 + doe - 719_468) * 86_400)
}

/// Unix seconds as `YYYY-MM-DD HH:MM` (UTC).
fn date_time(seconds: i64) -> String {
    let day = seconds.div_euclid(86_400);
    let month = store::month_of(seconds);
    let first = day_start(&format!("{month}-01")).map_or(0, |s| s / 86_400);
    let in_day = seconds.rem_euclid(86_400);
    format!(
        "{month}-{:02} {:02}:{:02}",
        day - first + 1,
        in_day / 3600,
        in_day % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(day_start("1970-01-01").unwrap(), 0);
        assert_eq!(day_start("2026-12-03").unwrap(), 1_796_256_000);
        assert_eq!(date_time(1_796_256_000 + 3_723), "2026-12-03 01:02");
        assert_eq!(date_time(951_782_400), "2000-02-29 00:00");
        assert!(day_start("2026-13-01").is_err());
        assert!(day_start("yesterday").is_err());
    }
}
