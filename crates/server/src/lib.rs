//! `cutout serve`: PhotoRoom- and remove.bg-compatible HTTP APIs over the edit pipeline.
//! Handlers parse and validate into one [`cutout_core::edit::Edit`], then submit a job to
//! the GPU queue; decoding and encoding run on tokio's blocking pool.

pub mod accounts;
mod api;
pub mod body;
mod dashboard;
pub mod fetch;
pub mod keys;
mod limit;
mod memory;
mod metrics;
mod openapi;
mod queue;
mod respond;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cutout_core::decode::DecodeLimits;
use cutout_core::edit::Editor;
use cutout_core::timing::Stage;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

pub use fetch::FetchPolicy;
pub use limit::{Clock, system_clock, unix_now};
#[cfg(feature = "fault-injection")]
pub use queue::WorkerHook;
pub use queue::{Batching, Reopen, WorkerStage};

pub struct Config {
    pub batching: Batching,
    pub fetch: FetchPolicy,
    /// Largest request body accepted (uploads), in bytes.
    pub max_upload: u64,
    pub decode: DecodeLimits,
    /// Keys, credits, rate limits and usage history; `None` serves every request
    /// (`--no-auth`), uncounted.
    pub store: Option<Arc<dyn store::Store>>,
    /// Credits per calendar month of keys created without their own allowance (the account
    /// endpoints report it).
    pub monthly_credits: f64,
    /// Megapixel images per minute (remove.bg's rule; PhotoRoom endpoints count images) of
    /// keys without their own limit; 0 for no limit.
    pub rate_limit: u32,
    /// Free calls a sandbox key has per UTC day (PhotoRoom's 100); more get 429.
    pub sandbox_daily_calls: i64,
    /// How long a credit hold outlives its replica's last renewal (renewed every third of
    /// it): a replica that dies mid-request gives its holds back after at most this.
    pub lease: Duration,
    /// Decodes and encodes running at once on tokio's blocking pool (which stays large for
    /// URL fetches): more than the cores only oversubscribes them, next to the model's
    /// threads. Default: the number of cores.
    pub cpu_workers: usize,
    /// Time a client has to send a request's headers before its connection is closed (a
    /// slowloris client holds nothing longer than this).
    pub header_read_timeout: Duration,
    /// How slowly a client may send a body (408 beyond it).
    pub body_pace: body::Pace,
    /// Connections open at once; one more is answered 503 with `Retry-After` and closed.
    pub max_connections: usize,
    /// Most headers in one request; more get 431.
    pub max_headers: usize,
    /// Most bytes of request line and headers; more get 431.
    pub max_header_bytes: usize,
    /// Bytes all requests in flight may hold at once (bodies, decoded pixels and their
    /// working copies, model forwards; see `memory`); raised at start to fit the largest
    /// single request.
    pub max_inflight_memory: u64,
    /// How long a request waits for memory before it gets 503 with `Retry-After`.
    pub admission_wait: Duration,
    /// The time credits and rate limits count months and minutes by.
    pub clock: Clock,
    /// Called by the GPU workers before each job (tests inject faults with it); `None`.
    #[cfg(feature = "fault-injection")]
    pub worker_hook: Option<WorkerHook>,
    /// Opens a new device and model when the device is lost; `None`: requests get 503 until
    /// the server is restarted.
    pub reopen: Option<Reopen>,
    /// `/readyz` counts the device as answering when it finished a batch or a probe this
    /// recently; otherwise it sends a probe (a one-pixel dispatch) and waits for it.
    pub readiness_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            batching: Batching {
                max_batch: 8,
                max_batch_pixels: 25_000_000,
                max_wait: Duration::from_millis(5),
                capacity: 64,
            },
            fetch: FetchPolicy::default(),
            max_upload: 30 * 1024 * 1024,
            decode: DecodeLimits::default(),
            store: None,
            monthly_credits: 10_000.0,
            rate_limit: 500,
            sandbox_daily_calls: accounts::SANDBOX_DAILY_CALLS,
            lease: Duration::from_secs(120),
            header_read_timeout: Duration::from_secs(30),
            body_pace: body::Pace {
                idle: Duration::from_secs(30),
                min_rate: 1024,
                grace: Duration::from_secs(10),
            },
            max_connections: 1024,
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            max_inflight_memory: 1536 << 20,
            admission_wait: Duration::from_secs(30),
            #[cfg(feature = "fault-injection")]
            worker_hook: None,
            reopen: None,
            readiness_interval: Duration::from_secs(10),
            cpu_workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            clock: system_clock(),
        }
    }
}

struct State {
    config: Config,
    /// Memory for the work in flight (`Config::max_inflight_memory`).
    memory: memory::MemoryBudget,
    /// Permits for decoding and encoding (`Config::cpu_workers`).
    cpu_work: tokio::sync::Semaphore,
    accounts: Option<Arc<accounts::Accounts>>,
    queue: queue::JobQueue,
    /// Request ids: a random prefix per server (replicas in containers share process ids)
    /// and a counter.
    id_prefix: u32,
    next_id: AtomicU64,
    /// The model the queue's editor runs (for the OpenAPI document).
    model: &'static cutout_core::model::ModelSpec,
    metrics: metrics::Metrics,
}

/// A running server: its address, and a handle to stop it.
pub struct Server {
    pub addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Stops accepting, lets in-flight requests finish, then returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Binds `addr` and serves until [`Server::shutdown`].
pub async fn start(addr: SocketAddr, editor: Editor, config: Config) -> std::io::Result<Server> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let model = editor.remover().session().spec;
    let metrics = metrics::Metrics::new(model.name, editor.ops().gpu());
    #[cfg(feature = "fault-injection")]
    let hook = config.worker_hook.clone();
    #[cfg(not(feature = "fault-injection"))]
    let hook = queue::Hook;
    let (queue, worker) = queue::JobQueue::start(
        editor,
        config.reopen.clone(),
        config.batching.clone(),
        hook,
        metrics.batch_size.clone(),
    );
    let accounts = config.store.clone().map(|store| {
        Arc::new(
            accounts::Accounts::new(
                store,
                config.monthly_credits,
                config.rate_limit,
                config.lease,
                config.clock.clone(),
            )
            .with_sandbox_daily_calls(config.sandbox_daily_calls),
        )
    });
    let lease_keeper = accounts.as_ref().map(|a| a.keep_leases());
    let largest = config.max_upload
        + config.decode.max_pixels * memory::BYTES_PER_PIXEL
        + model.forward_bytes();
    if largest > config.max_inflight_memory {
        log::warn!(
            "the largest requests ({} MiB: {} MP and {} MiB of model forward) exceed the memory for work in flight ({} MiB) and will run one at a time",
            largest >> 20,
            config.decode.max_pixels / 1_000_000,
            model.forward_bytes() >> 20,
            config.max_inflight_memory >> 20
        );
    }
    let state = Arc::new(State {
        memory: memory::MemoryBudget::new(config.max_inflight_memory, config.admission_wait),
        cpu_work: tokio::sync::Semaphore::new(config.cpu_workers.max(1)),
        config,
        accounts,
        queue,
        id_prefix: random_u32(),
        next_id: AtomicU64::new(1),
        model,
        metrics,
    });
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let connections = Arc::new(tokio::sync::Semaphore::new(
        state.config.max_connections.max(1),
    ));
    let task = tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((mut stream, peer)) = accepted else { continue };
                    let Ok(permit) = connections.clone().try_acquire_owned() else {
                        tokio::spawn(async move { refuse_connection(&mut stream).await });
                        continue;
                    };
                    let mut http = http1::Builder::new();
                    http.timer(TokioTimer::new())
                        .header_read_timeout(state.config.header_read_timeout)
                        .max_headers(state.config.max_headers)
                        .max_buf_size(state.config.max_header_bytes.max(8192));
                    let state = state.clone();
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(state, peer, request).await) }
                    });
                    let connection = http.serve_connection(TokioIo::new(stream), service);
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        let _ = connection.await;
                        drop(permit);
                    });
                }
                _ = stopped.changed() => break,
            }
        }
        // In-flight requests finish; idle keep-alive connections close.
        graceful.shutdown().await;
        if let Some(keeper) = lease_keeper {
            keeper.abort();
        }
        drop(state);
        let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    });
    Ok(Server { addr, stop, task })
}

/// 32 random bits from the standard library's per-process hash keys (seeded by the OS).
fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    hasher.write_u128(now.unwrap_or_default().as_nanos());
    hasher.finish() as u32
}

/// One connection over `Config::max_connections`: a 503 in plain HTTP, then closed.
async fn refuse_connection(stream: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = r#"{"error":{"code":"too_many_connections","message":"too many open connections; retry later"}}"#;
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    mut request: hyper::Request<hyper::body::Incoming>,
) -> respond::Reply {
    let started = Instant::now();
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let request_id = format!("{:08x}-{id:06}", state.id_prefix);
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let received = metrics::Received::default();
    request.extensions_mut().insert(received.clone());
    let mut reply = api::route(&state, peer, request).await;
    let total = started.elapsed();
    let rendered = reply.extensions_mut().remove::<metrics::Rendered>();
    let key = reply.extensions_mut().remove::<metrics::KeyName>();
    let record = metrics::RequestRecord {
        route: metrics::route_label(&path),
        status: reply.status().as_u16(),
        key: key.as_ref().map(|k| k.0.as_str()),
        received_bytes: received.get(),
        sent_bytes: hyper::body::Body::size_hint(reply.body())
            .exact()
            .unwrap_or(0),
        rendered: rendered.as_ref(),
        total,
    };
    state.metrics.record(&record);
    log_request(&request_id, &method, &path, &record);
    let headers = reply.headers_mut();
    let value = |text: String| text.parse().expect("header text");
    headers.insert("x-request-id", value(request_id));
    headers.insert("x-processing-time-ms", value(total.as_millis().to_string()));
    headers.insert("access-control-allow-origin", value("*".into()));
    headers.insert("access-control-expose-headers", value("*".into()));
    reply
}

/// One line per request (target `cutout::request`): no image data and no key, only its
/// name. Rendered images add their megapixels, credits and stage timings; successful
/// health, readiness and metrics requests (polled every few seconds) log at debug.
fn log_request(
    request_id: &str,
    method: &hyper::Method,
    path: &str,
    record: &metrics::RequestRecord,
) {
    // The path as requested, cut short: it is the client's text.
    let path: String = path.chars().take(100).collect();
    let key = record.key.unwrap_or("-");
    let ms = |spent: Duration| (spent.as_secs_f64() * 1e6).round() / 1e3;
    macro_rules! line {
        ($level:ident $(, $($extra:tt)+)?) => {
            tracing::$level!(
                target: "cutout::request",
                request_id,
                method = %method,
                path = %path,
                route = record.route,
                status = record.status,
                key,
                received_bytes = record.received_bytes,
                sent_bytes = record.sent_bytes,
                $($($extra)+,)?
                total_ms = ms(record.total),
            )
        };
    }
    match record.rendered {
        Some(rendered) => {
            let stage = |stage: Stage| ms(rendered.timings.get(stage));
            line!(
                info,
                megapixels = rendered.megapixels,
                credits = rendered.credits,
                admission_ms = stage(Stage::Admission),
                read_body_ms = stage(Stage::ReadBody),
                decode_ms = stage(Stage::Decode),
                queue_wait_ms = stage(Stage::QueueWait),
                preprocess_ms = stage(Stage::Preprocess),
                forward_ms = stage(Stage::Forward),
                effects_ms = stage(Stage::Effects),
                readback_ms = stage(Stage::Readback),
                encode_ms = stage(Stage::Encode)
            )
        }
        None if record.status == 200
            && matches!(
                record.route,
                "/health" | "/healthz" | "/readyz" | "/metrics"
            ) =>
        {
            line!(debug)
        }
        None => line!(info),
    }
}
