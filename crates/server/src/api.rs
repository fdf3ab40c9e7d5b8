//! The endpoints. Each one: authenticate → read the body → parse into an `Edit` → fetch or
//! take the image bytes → run the job → reply in its dialect.

use std::time::Instant;

use base64::Engine;
use bytes::Bytes;
use cutout_core::edit::{Edit, Job, photoroom, removebg};
use cutout_core::encode::{Encoded, encode_result};
use cutout_core::timing::{Stage, StageTimes};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::json;

use crate::State;
use crate::accounts::{Held, Refused};
use crate::body::{self, BodyError, Form};
use crate::fetch::{self, FetchError};
use crate::limit::{self, Budget};
use crate::memory::{Claim, MemoryBudget};
use crate::metrics::{self, InFlight, KeyName};
use crate::queue::Rejected;
use crate::respond::{Dialect, Failure, Reply, error_reply, json_reply};
use crate::store::{self, Key, Plan, StoreError, UsageRow};

pub async fn route(state: &State, peer: std::net::SocketAddr, request: Request<Incoming>) -> Reply {
    let path = request.uri().path().trim_end_matches('/').to_string();
    let method = request.method().clone();
    let dialect = match path.as_str() {
        "/v1/segment" => Dialect::Segment,
        "/v2/edit" | "/v1/account" | "/v2/account" => Dialect::PhotoRoom,
        "/v1.0/removebg" | "/v1.0/account" => Dialect::RemoveBg,
        _ => Dialect::Simple,
    };
    let result = match (&method, path.as_str()) {
        (&Method::OPTIONS, _) => Ok(preflight()),
        (&Method::GET, "/openapi.json") => Ok(json_reply(
            StatusCode::OK,
            crate::openapi::document(state.model, state.config.max_upload),
        )),
        (
            &Method::GET,
            "" | "/playground.js" | "/playground.css" | "/dashboard" | "/dashboard.js",
        ) => Ok(asset(&path)),
        (&Method::GET, "/metrics") => admin_only(state, peer, &request)
            .await
            .map(|()| metrics_page(state)),
        (&Method::GET, "/dashboard/data") => match admin_only(state, peer, &request).await {
            Ok(()) => crate::dashboard::data(state).await,
            Err(failure) => Err(failure),
        },
        (&Method::GET, "/readyz") => Ok(readiness(state).await),
        (&Method::GET, "/health" | "/healthz") => Ok(json_reply(
            StatusCode::OK,
            json!({
                "status": "ok",
                "queued": state.queue.in_flight(),
                "memory": {
                    "budget_bytes": state.memory.bytes(),
                    "in_flight_bytes": state.memory.in_flight(),
                },
            }),
        )),
        (
            _,
            "/v1/segment"
            | "/v2/edit"
            | "/v1/account"
            | "/v2/account"
            | "/v1.0/removebg"
            | "/v1.0/account"
            | "/v1/remove-background"
            | "/remove-background",
        ) => Ok(api(state, request, &path, dialect).await),
        _ => Err(Failure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no endpoint at {path}"),
        )),
    };
    result.unwrap_or_else(|failure| error_reply(dialect, &failure))
}

/// How long `/readyz` waits for the device's probe and for the database.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The playground's and the dashboard's pages, scripts and style, built into the binary (no
/// CDN, no build step). The dashboard's page holds no data: `/dashboard/data` needs an admin.
fn asset(path: &str) -> Reply {
    let (content_type, text) = match path {
        "/playground.js" => (
            "text/javascript; charset=utf-8",
            include_str!("../assets/playground.js"),
        ),
        "/playground.css" => (
            "text/css; charset=utf-8",
            include_str!("../assets/playground.css"),
        ),
        "/dashboard" => (
            "text/html; charset=utf-8",
            include_str!("../assets/dashboard.html"),
        ),
        "/dashboard.js" => (
            "text/javascript; charset=utf-8",
            include_str!("../assets/dashboard.js"),
        ),
        _ => (
            "text/html; charset=utf-8",
            include_str!("../assets/index.html"),
        ),
    };
    hyper::Response::builder()
        .status(StatusCode::OK)
        .header("content-type", content_type)
        // Only this server's own script, style and images (results are blob: URLs).
        .header(
            "content-security-policy",
            "default-src 'self'; img-src 'self' blob: data:; connect-src 'self' blob:; object-src 'none'; base-uri 'none'",
        )
        .header("x-content-type-options", "nosniff")
        .body(text.into())
        .expect("valid response")
}

/// `/readyz`: 200 when the model is loaded, the device answered a tiny dispatch in the last
/// `Config::readiness_interval` (or answers one now) and the accounts database (if any) answers; else 503
/// naming what failed.
async fn readiness(state: &State) -> Reply {
    let device = state
        .queue
        .check_device(state.config.readiness_interval, READY_TIMEOUT)
        .await;
    let database = match &state.accounts {
        None => None,
        Some(accounts) => Some(
            match tokio::time::timeout(READY_TIMEOUT, accounts.store().ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err(format!("no answer within {READY_TIMEOUT:?}")),
            },
        ),
    };
    let check = |result: &Result<(), String>| match result {
        Ok(()) => json!({"ok": true}),
        Err(why) => json!({"ok": false, "error": why}),
    };
    let ready = device.is_ok() && database.as_ref().is_none_or(Result::is_ok);
    let mut checks = json!({
        "model": {"ok": true, "name": state.model.name},
        "device": check(&device),
    });
    if let Some(database) = &database {
        checks["database"] = check(database);
    }
    let (status, word) = match ready {
        true => (StatusCode::OK, "ready"),
        false => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
    };
    let mut reply = json_reply(status, json!({"status": word, "checks": checks}));
    if !ready {
        reply
            .headers_mut()
            .insert("retry-after", DEVICE_RETRY_AFTER.into());
    }
    reply
}

/// `/metrics` in Prometheus' text format, with the gauges read now.
fn metrics_page(state: &State) -> Reply {
    let text = state.metrics.render(
        state.queue.in_flight(),
        state.memory.in_flight(),
        state.memory.bytes(),
    );
    hyper::Response::builder()
        .status(StatusCode::OK)
        .header("content-type", prometheus::TEXT_FORMAT)
        .body(text.into())
        .expect("valid response")
}

/// Pages about the whole server (metrics, the dashboard) are for admin keys (401 without a
/// valid key, 403 with another); without accounts (`--no-auth`), for loopback clients only.
async fn admin_only(
    state: &State,
    peer: std::net::SocketAddr,
    request: &Request<Incoming>,
) -> Result<(), Failure> {
    let forbidden = |message: &str| Failure::new(StatusCode::FORBIDDEN, "forbidden", message);
    if state.accounts.is_none() {
        return match peer.ip().to_canonical().is_loopback() {
            true => Ok(()),
            false => Err(forbidden(
                "without accounts (--no-auth) this page is served to loopback clients only",
            )),
        };
    }
    match authenticate(state, request, Dialect::Simple).await? {
        Some(key) if key.admin => Ok(()),
        _ => Err(forbidden("this page needs an admin key")),
    }
}

/// The API endpoints: the caller's key first (so no route can skip it), then the handler;
/// a request that rendered nothing is still recorded in the key's usage history.
async fn api(state: &State, request: Request<Incoming>, path: &str, dialect: Dialect) -> Reply {
    let started = Instant::now();
    let key = match authenticate(state, &request, dialect).await {
        Ok(key) => key,
        Err(failure) => return error_reply(dialect, &failure),
    };
    let mut reply = serve(state, request, path, dialect, key.as_ref(), started).await;
    if let Some(key) = key {
        rate_headers(state, &key, &mut reply).await;
        reply.extensions_mut().insert(KeyName(key.name));
    }
    reply
}

/// `X-RateLimit-*` on every reply to a key with a limit: a reply whose request took nothing
/// from the minute (an error before the image was sized, an account call) reports what is
/// left without taking any. Left out if the database cannot say.
async fn rate_headers(state: &State, key: &Key, reply: &mut Reply) {
    let Some(accounts) = &state.accounts else {
        return;
    };
    if reply.headers().contains_key("x-ratelimit-limit") {
        return;
    }
    if let Ok(Some(budget)) = accounts.rate_budget(key).await {
        for (name, value) in budget.headers() {
            reply
                .headers_mut()
                .insert(name, value.parse().expect("digits"));
        }
    }
}

/// An authenticated API request: the handler, then the usage history of one that failed.
async fn serve(
    state: &State,
    request: Request<Incoming>,
    path: &str,
    dialect: Dialect,
    key: Option<&Key>,
    started: Instant,
) -> Reply {
    let result = dispatch(state, request, path, key).await;
    if let (Err(failure), Some(key), Some(accounts)) = (&result, key, &state.accounts)
        && !path.ends_with("/account")
    {
        accounts
            .record(&UsageRow {
                key_id: key.id,
                at: accounts.now(),
                endpoint: path,
                megapixels: 0.0,
                millicredits: 0,
                status: failure.status.as_u16(),
                duration_ms: started.elapsed().as_millis() as i64,
            })
            .await;
    }
    result.unwrap_or_else(|failure| error_reply(dialect, &failure))
}

/// The handler for `path` and the request's method.
async fn dispatch(
    state: &State,
    request: Request<Incoming>,
    path: &str,
    key: Option<&Key>,
) -> Result<Reply, Failure> {
    let method = request.method().clone();
    // The body is charged to the memory budget before it is read: as declared, or the
    // largest allowed when it is sent in chunks.
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(state.config.max_upload)
        .min(state.config.max_upload);
    let admit = || async {
        state
            .memory
            .admit(declared)
            .await
            .ok_or_else(memory_failure)
    };
    match (&method, path) {
        (&Method::POST, "/v1/segment") => segment(state, request, key, admit().await?).await,
        (&Method::GET | &Method::POST, "/v2/edit") => {
            edit(state, request, key, admit().await?).await
        }
        (&Method::GET, "/v1/account" | "/v2/account") => photoroom_account(state, key, path).await,
        (&Method::POST, "/v1.0/removebg") => remove_bg(state, request, key, admit().await?).await,
        (&Method::GET, "/v1.0/account") => remove_bg_account(state, key).await,
        (&Method::POST, "/v1/remove-background" | "/remove-background") => {
            simple(state, request, key, admit().await?).await
        }
        _ => Err(Failure::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        )),
    }
}

fn preflight() -> Reply {
    let mut reply = json_reply(StatusCode::NO_CONTENT, serde_json::Value::Null);
    *reply.body_mut() = Default::default();
    let headers = reply.headers_mut();
    headers.insert(
        "access-control-allow-methods",
        "GET, POST, OPTIONS".parse().expect("ascii"),
    );
    headers.insert("access-control-allow-headers", "*".parse().expect("ascii"));
    reply
}

/// The memory for work in flight stayed full for the admission wait.
fn memory_failure() -> Failure {
    let mut failure = Failure::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_busy",
        "the server's memory for work in flight is full; retry later",
    );
    failure.retry_after = Some(DEVICE_RETRY_AFTER);
    failure
}

/// The database is down or busy: the request is refused, never served unmetered.
pub(crate) fn store_failure(error: StoreError) -> Failure {
    if error.is_unavailable() {
        log::warn!("accounts store: {error}");
        let mut failure = Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "accounts_unavailable",
            "the accounts database is unavailable; retry later",
        );
        failure.retry_after = Some(5);
        failure
    } else {
        Failure::internal(error)
    }
}

/// The caller's key: `None` when the server runs without accounts (`--no-auth`).
async fn authenticate(
    state: &State,
    request: &Request<Incoming>,
    dialect: Dialect,
) -> Result<Option<Key>, Failure> {
    let Some(accounts) = &state.accounts else {
        return Ok(None);
    };
    let denied = if dialect == Dialect::Simple {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::FORBIDDEN
    };
    let presented = request
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            request
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        });
    let (missing, invalid) = match dialect {
        Dialect::Simple => ("authentication_error", "authentication_error"),
        _ => ("missing_api_key", "auth_failed"),
    };
    let Some(presented) = presented else {
        return Err(Failure::new(
            denied,
            missing,
            "Missing API Key: send it in the x-api-key header",
        ));
    };
    match accounts.authenticate(presented.trim()).await {
        Ok(Some(key)) => Ok(Some(key)),
        Ok(None) => Err(Failure::new(denied, invalid, "API Key invalid")),
        Err(e) => Err(store_failure(e)),
    }
}

/// Holds the request's credits until its image is ready (no key: nothing to hold).
async fn reserve_credits(
    state: &State,
    key: Option<&Key>,
    credits: f64,
) -> Result<Option<Held>, Failure> {
    let (Some(key), Some(accounts)) = (key, &state.accounts) else {
        return Ok(None);
    };
    match accounts.reserve(key, credits).await {
        Ok(Ok(held)) => Ok(Some(held)),
        Ok(Err(Refused::Credits)) => Err(Failure::new(
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_credits",
            if key.sandbox {
                "Sandbox quota exhausted for this month"
            } else {
                "Insufficient credits"
            },
        )),
        Ok(Err(Refused::SandboxDay { resets_at })) => {
            let mut failure = Failure::new(
                StatusCode::TOO_MANY_REQUESTS,
                "sandbox_daily_limit",
                format!(
                    "Sandbox quota exhausted for today ({} calls a day; resets at 00:00 UTC)",
                    accounts.sandbox_daily_calls()
                ),
            );
            failure.retry_after = Some((resets_at - accounts.now()).max(1) as u64);
            Err(failure)
        }
        Err(e) => Err(store_failure(e)),
    }
}

fn body_failure(error: BodyError, dialect: Dialect) -> Failure {
    match error {
        BodyError::TooLarge(limit) => {
            let code = match dialect {
                Dialect::RemoveBg => "file_too_large",
                Dialect::Simple => "image_too_large",
                _ => "payload_too_large",
            };
            // The simple API documents 400 for a file over its limit.
            let status = match dialect {
                Dialect::Simple => StatusCode::BAD_REQUEST,
                _ => StatusCode::PAYLOAD_TOO_LARGE,
            };
            Failure::new(
                status,
                code,
                format!("the request body is larger than {limit} bytes"),
            )
        }
        BodyError::Unsupported(message) => Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        ),
        BodyError::Malformed(message) => Failure::bad_request("validation_error", message),
        BodyError::TooSlow(message) => {
            Failure::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message)
        }
    }
}

/// A rendered and encoded result with what the headers report.
struct Rendered {
    encoded: Encoded,
    /// The key's rate budget after this image, when rate limits apply.
    rate: Option<Budget>,
    width: u32,
    height: u32,
    foreground: Option<[u32; 4]>,
    uncertainty: Option<f32>,
    /// Timings, megapixels and credits, for the log line and the metrics.
    served: metrics::Rendered,
}

/// Who pays for a request, and how much.
struct Charge<'a> {
    key: Option<&'a Key>,
    /// The path the usage history records.
    endpoint: &'static str,
    /// Credits, taken only when the image renders (402 when the key has too few left).
    credits: f64,
    /// Units of the per-minute rate limit, from the decoded image (429 when none are left).
    rate: RateCost,
}

#[derive(Clone, Copy)]
enum RateCost {
    /// PhotoRoom: one per image.
    Image,
    /// remove.bg: the input's megapixels, rounded up.
    Megapixels,
}

impl<'a> Charge<'a> {
    fn new(key: Option<&'a Key>, endpoint: &'static str, credits: f64, rate: RateCost) -> Self {
        Self {
            key,
            endpoint,
            credits,
            rate,
        }
    }

    /// `X-Credits-Charged`: what the key pays (a sandbox key pays nothing).
    fn charged(&self) -> f64 {
        if self.key.is_some_and(|k| k.sandbox) {
            0.0
        } else {
            self.credits
        }
    }
}

/// Takes the image's units from the key's minute; keys only, and only with a limit set.
async fn rate_check(
    state: &State,
    charge: &Charge<'_>,
    (width, height): (u32, u32),
) -> Result<Option<Budget>, Failure> {
    let (Some(key), Some(accounts)) = (charge.key, &state.accounts) else {
        return Ok(None);
    };
    let units = match charge.rate {
        RateCost::Image => 1,
        RateCost::Megapixels => limit::megapixel_images(width, height),
    };
    match accounts
        .take_rate(key, units)
        .await
        .map_err(store_failure)?
    {
        None => Ok(None),
        Some(Ok(budget)) => Ok(Some(budget)),
        Some(Err(budget)) => {
            let mut failure = Failure::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                format!(
                    "Rate limit exceeded: {} megapixel images per minute, this image needs {units}",
                    budget.limit
                ),
            );
            failure.retry_after = Some(budget.retry_after(accounts.now() as u64));
            failure.headers.extend(budget.headers());
            Err(failure)
        }
    }
}

/// Decodes, renders on the GPU queue and encodes one image, charging the key as `charge`
/// says. `received` is when the handler started: reading the body (and fetching URLs) took
/// the time since.
async fn render(
    state: &State,
    received: Instant,
    body: Claim,
    image: Bytes,
    background: Option<Bytes>,
    edit: Edit,
    charge: Charge<'_>,
) -> Result<Rendered, Failure> {
    let mut timings = StageTimes::default();
    timings.add(Stage::ReadBody, received.elapsed());
    let (key, credits, charged) = (charge.key, charge.credits, charge.charged());
    // Released on every early return below (and if the client goes away mid-render).
    let reservation = reserve_credits(state, key, credits).await?;
    let limits = state.config.decode;
    let decode = |bytes: Bytes, what: &'static str| async move {
        let _permit = state.cpu_work.acquire().await.map_err(Failure::internal)?;
        tokio::task::spawn_blocking(move || cutout_core::decode::decode(&bytes, limits))
            .await
            .map_err(Failure::internal)?
            .map_err(|e| decode_failure(e, what))
    };
    // Before any pixel is decoded: the body's claim grows to what the image will need.
    let size = |bytes: &Bytes| cutout_core::decode::dimensions(bytes).unwrap_or((0, 0));
    let pixels = |(w, h): (u32, u32)| w as u64 * h as u64;
    let (width, height) = size(&image);
    let pixels = pixels((width, height))
        + background.as_ref().map_or(0, |b| pixels(size(b)))
        + edit.canvas_pixels_beyond_input([width, height]);
    let needed = MemoryBudget::image_bytes(pixels, state.model);
    let memory = state
        .memory
        .grow(body, needed)
        .await
        .ok_or_else(memory_failure)?;
    timings.add(Stage::Admission, memory.waited());
    let start = Instant::now();
    let image = decode(image, "image").await?;
    let (input_width, input_height) = image.dimensions();
    let rate = rate_check(state, &charge, (input_width, input_height)).await?;
    let background = match background {
        Some(bytes) => Some(decode(bytes, "background image").await?),
        None => None,
    };
    timings.add(Stage::Decode, start.elapsed());
    let mut edit = edit;
    edit.watermark |= key.is_some_and(|k| k.sandbox);
    let (format, channels, dpi) = (edit.format, edit.channels, edit.dpi);
    let megapixels = input_width as f64 * input_height as f64 / 1e6;
    let in_flight = InFlight::new(&state.metrics.in_flight_megapixels, megapixels);
    let output = match state
        .queue
        .render(Job {
            image,
            background,
            edit,
        })
        .await
    {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => return Err(render_failure(error)),
        Err(Rejected::Busy { retry_after }) => {
            let mut failure = Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_busy",
                "the GPU queue is full; retry later",
            );
            failure.retry_after = Some(retry_after);
            return Err(failure);
        }
        Err(Rejected::Stopped) => {
            return Err(Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down",
            ));
        }
    };
    drop(in_flight);
    let (width, height) = output.image.dimensions();
    let (foreground, uncertainty) = (output.foreground, output.uncertainty);
    timings += output.timings;
    let start = Instant::now();
    let permit = state.cpu_work.acquire().await.map_err(Failure::internal)?;
    let encoded =
        tokio::task::spawn_blocking(move || encode_result(&output.image, format, channels, dpi))
            .await
            .map_err(Failure::internal)?
            .map_err(Failure::internal)?;
    drop(permit);
    timings.add(Stage::Encode, start.elapsed());
    if let (Some(reservation), Some(accounts)) = (reservation, &state.accounts) {
        let duration = received.elapsed().as_millis() as i64;
        let committed = reservation
            .commit(accounts.now(), charge.endpoint, megapixels, duration)
            .await
            .map_err(store_failure)?;
        if !committed {
            // The hold's lease ran out (its renewals could not reach the database) and was
            // released: the image is not given away unpaid.
            let mut failure = Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "accounts_unavailable",
                "the credit hold for this request expired; retry",
            );
            failure.retry_after = Some(1);
            return Err(failure);
        }
    }
    Ok(Rendered {
        encoded,
        rate,
        width,
        height,
        foreground,
        uncertainty,
        served: metrics::Rendered {
            timings,
            megapixels,
            credits: charged,
        },
    })
}

async fn fetch_url(
    state: &State,
    url: String,
    dialect: Dialect,
    background: bool,
) -> Result<Bytes, Failure> {
    let policy = state.config.fetch.clone();
    let result = tokio::task::spawn_blocking(move || fetch::fetch(&url, &policy))
        .await
        .map_err(Failure::internal)?;
    let (refused, failed) = match (dialect, background) {
        (Dialect::RemoveBg, false) => ("invalid_image_url", "failed_image_download"),
        (Dialect::RemoveBg, true) => ("invalid_bg_image_url", "failed_bg_download"),
        _ => ("validation_error", "failed_image_download"),
    };
    result.map(Bytes::from).map_err(|e| match e {
        FetchError::Refused(why) => Failure::bad_request(refused, why),
        FetchError::TooLarge(limit) => Failure::bad_request(
            "file_too_large",
            format!("the image at the URL is larger than {limit} bytes"),
        ),
        FetchError::Failed(why) => Failure::bad_request(failed, why),
    })
}

fn image_reply(rendered: &Rendered) -> hyper::http::response::Builder {
    let mut builder = hyper::Response::builder()
        .status(StatusCode::OK)
        .header("x-image-width", rendered.width)
        .header("x-image-height", rendered.height)
        .header("x-width", rendered.width)
        .header("x-height", rendered.height);
    if let Some([left, top, width, height]) = rendered.foreground {
        builder = builder
            .header("x-foreground-top", top)
            .header("x-foreground-left", left)
            .header("x-foreground-width", width)
            .header("x-foreground-height", height);
    }
    for (name, value) in rendered.rate.iter().flat_map(Budget::headers) {
        builder = builder.header(name, value);
    }
    let score = rendered
        .uncertainty
        .map_or("-1".to_string(), |u| format!("{u:.4}"));
    builder.header("x-uncertainty-score", score)
}

/// The result as the image itself.
fn image_body(builder: hyper::http::response::Builder, rendered: Rendered) -> Reply {
    builder
        .header("content-type", rendered.encoded.mime)
        .extension(rendered.served)
        .body(rendered.encoded.bytes.into())
        .expect("valid response")
}

/// The result base64-encoded inside the JSON that `wrap` builds around it.
fn json_body(
    builder: hyper::http::response::Builder,
    rendered: &Rendered,
    wrap: impl FnOnce(String) -> serde_json::Value,
) -> Reply {
    let b64 = base64::engine::general_purpose::STANDARD.encode(&rendered.encoded.bytes);
    builder
        .header("content-type", "application/json")
        .extension(rendered.served)
        .body(wrap(b64).to_string().into())
        .expect("valid response")
}

fn wants_json(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"))
}

fn field_failure(e: cutout_core::edit::FieldError) -> Failure {
    Failure::bad_request("validation_error", e.to_string())
}

/// An upload that did not decode: too large (400 `resolution_too_high`), a format cutout
/// recognises but does not decode (415 `invalid_file_type`, naming it), or unreadable (400
/// `failed_to_read_image`).
fn decode_failure(error: cutout_core::Error, what: &str) -> Failure {
    use cutout_core::Error;
    match error {
        Error::TooLarge(m) => Failure::bad_request("resolution_too_high", format!("{what}: {m}")),
        Error::UnsupportedFormat(_) => Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_file_type",
            format!("{what}: {error}"),
        ),
        other => Failure::bad_request("failed_to_read_image", format!("{what}: {other}")),
    }
}

/// Seconds a client is asked to wait after the device ran out of memory or was lost.
const DEVICE_RETRY_AFTER: u64 = 5;

/// A failed render by what failed: the request's fault (400), the device's state (503
/// with `Retry-After`: the same request can succeed later) or the server's (500).
fn render_failure(error: cutout_core::Error) -> Failure {
    use cutout_core::Error;
    let unavailable = |code: &str, error: &Error| {
        let mut failure = Failure::new(StatusCode::SERVICE_UNAVAILABLE, code, error.to_string());
        failure.retry_after = Some(DEVICE_RETRY_AFTER);
        failure
    };
    match error {
        Error::InvalidRoi(_) => Failure::bad_request("invalid_roi", error.to_string()),
        Error::InvalidParameter(field) => field_failure(field),
        Error::TooLarge(message) => Failure::bad_request("resolution_too_high", message),
        Error::Decode(_) | Error::UnsupportedFormat(_) => decode_failure(error, "image"),
        Error::OutOfMemory(_) => unavailable("out_of_memory", &error),
        Error::DeviceLost(_) => unavailable("device_lost", &error),
        other => Failure::internal(other),
    }
}

/// A preview (0.25 MP) costs a quarter credit, any other size one.
fn preview_aware_credits(edit: &Edit) -> f64 {
    if edit.max_pixels == Some(250_000) {
        0.25
    } else {
        1.0
    }
}

async fn segment(
    state: &State,
    request: Request<Incoming>,
    key: Option<&Key>,
    body: Claim,
) -> Result<Reply, Failure> {
    let received = Instant::now();
    let json_wanted = wants_json(&request);
    let form = body::read_form(request, state.config.max_upload, state.config.body_pace)
        .await
        .map_err(|e| body_failure(e, Dialect::Segment))?;
    let edit = photoroom::parse_v1_segment(form.parameters()).map_err(field_failure)?;
    let image = form
        .file("image_file")
        .cloned()
        .ok_or_else(|| Failure::bad_request("missing_image", "Please provide an image."))?;
    // PhotoRoom's Plus plan counts a segment call as 0.2 of an image.
    let plan_share = match key.map(|k| k.plan) {
        Some(Plan::Plus) => 0.2,
        _ => 1.0,
    };
    let charge = Charge::new(
        key,
        "/v1/segment",
        preview_aware_credits(&edit) * plan_share,
        RateCost::Image,
    );
    let charged = charge.charged();
    let rendered = render(state, received, body, image, None, edit, charge).await?;
    let builder = image_reply(&rendered).header("x-credits-charged", charged.to_string());
    Ok(if json_wanted {
        json_body(
            builder,
            &rendered,
            |b64| json!({"result_b64": b64, "base64img": b64}),
        )
    } else {
        image_body(builder, rendered)
    })
}

async fn edit(
    state: &State,
    request: Request<Incoming>,
    key: Option<&Key>,
    body: Claim,
) -> Result<Reply, Failure> {
    let received = Instant::now();
    let form = if request.method() == Method::GET {
        Form {
            fields: body::query(&request),
            files: Vec::new(),
        }
    } else {
        let mut form = body::read_form(request, state.config.max_upload, state.config.body_pace)
            .await
            .map_err(|e| body_failure(e, Dialect::PhotoRoom))?;
        form.fields
            .retain(|(name, _)| !form_has_file(&form.files, name));
        form
    };
    let edit = photoroom::parse_v2_edit(form.parameters()).map_err(field_failure)?;
    let image = match (form.file("imageFile"), form.field("imageUrl")) {
        (Some(bytes), _) => bytes.clone(),
        (None, Some(url)) => fetch_url(state, url.to_string(), Dialect::PhotoRoom, false).await?,
        (None, None) => {
            return Err(Failure::bad_request(
                "missing_image",
                "imageUrl: Required (or send imageFile)",
            ));
        }
    };
    let background = match (
        form.file("background.imageFile"),
        form.field("background.imageUrl"),
    ) {
        (Some(bytes), _) => Some(bytes.clone()),
        (None, Some(url)) => {
            Some(fetch_url(state, url.to_string(), Dialect::PhotoRoom, true).await?)
        }
        (None, None) => None,
    };
    let charge = Charge::new(key, "/v2/edit", 1.0, RateCost::Image);
    let charged = charge.charged();
    let rendered = render(state, received, body, image, background, edit, charge).await?;
    Ok(image_body(
        image_reply(&rendered).header("x-credits-charged", charged.to_string()),
        rendered,
    ))
}

fn form_has_file(files: &[(String, Bytes)], name: &str) -> bool {
    files.iter().any(|(k, _)| k == name)
}

async fn photoroom_account(state: &State, key: Option<&Key>, path: &str) -> Result<Reply, Failure> {
    let (available, subscription, plan) = match (key, &state.accounts) {
        (Some(key), Some(accounts)) => {
            let balance = accounts.balance(key).await.map_err(store_failure)?;
            (
                store::credits(balance.available()),
                store::credits(balance.allowance),
                key.plan.as_str(),
            )
        }
        _ => {
            let total = state.config.monthly_credits;
            (total, total, "self-hosted")
        }
    };
    let body = if path == "/v1/account" {
        json!({"credits": {"available": available, "subscription": subscription}})
    } else {
        json!({"images": {"available": available, "subscription": subscription}, "plan": plan})
    };
    Ok(json_reply(StatusCode::OK, body))
}

async fn remove_bg(
    state: &State,
    request: Request<Incoming>,
    key: Option<&Key>,
    body: Claim,
) -> Result<Reply, Failure> {
    let received = Instant::now();
    let json_wanted = wants_json(&request);
    let form = body::read_form(request, state.config.max_upload, state.config.body_pace)
        .await
        .map_err(|e| body_failure(e, Dialect::RemoveBg))?;
    let edit = removebg::parse(form.parameters())
        .map_err(|e| Failure::bad_request(removebg::error_code(&e.field), e.to_string()))?;

    let sources = [
        form.file("image_file").is_some(),
        form.field("image_file_b64").is_some(),
        form.field("image_url").is_some(),
    ];
    match sources.iter().filter(|&&given| given).count() {
        0 => {
            return Err(Failure::bad_request(
                "missing_source",
                "No image given: send image_file, image_file_b64 or image_url",
            ));
        }
        1 => {}
        _ => {
            return Err(Failure::bad_request(
                "multiple_sources",
                "give exactly one of image_file, image_file_b64 and image_url",
            ));
        }
    }
    let image = if let Some(bytes) = form.file("image_file") {
        bytes.clone()
    } else if let Some(b64) = form.field("image_file_b64") {
        let data = b64.split_once("base64,").map_or(b64, |(_, data)| data);
        base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map(Bytes::from)
            .map_err(|e| {
                Failure::bad_request(
                    "failed_to_read_image",
                    format!("image_file_b64 is not base64: {e}"),
                )
            })?
    } else {
        let url = form.field("image_url").expect("counted above").to_string();
        fetch_url(state, url, Dialect::RemoveBg, false).await?
    };
    let background = match (form.file("bg_image_file"), form.field("bg_image_url")) {
        (Some(bytes), _) => Some(bytes.clone()),
        (None, Some(url)) => {
            Some(fetch_url(state, url.to_string(), Dialect::RemoveBg, true).await?)
        }
        (None, None) => None,
    };
    let charge = Charge::new(
        key,
        "/v1.0/removebg",
        preview_aware_credits(&edit),
        RateCost::Megapixels,
    );
    let charged = charge.charged();
    let rendered = render(state, received, body, image, background, edit, charge).await?;
    let mut builder = image_reply(&rendered).header("x-credits-charged", charged.to_string());
    if let Some(kind) = form.field("type").filter(|t| *t != "auto")
        && form.field("type_level") != Some("none")
    {
        builder = builder.header("x-type", kind);
    }
    Ok(if json_wanted {
        let [left, top, width, height] = rendered.foreground.unwrap_or([0; 4]);
        json_body(builder, &rendered, |b64| {
            json!({"data": {
                "result_b64": b64,
                "foreground_top": top,
                "foreground_left": left,
                "foreground_width": width,
                "foreground_height": height,
            }})
        })
    } else {
        image_body(builder, rendered)
    })
}

async fn remove_bg_account(state: &State, key: Option<&Key>) -> Result<Reply, Failure> {
    // remove.bg reports credits left: subscription plus pay-as-you-go; a sandbox key's free
    // calls are its `free_calls`.
    let (subscription, payg, free_calls) = match (key, &state.accounts) {
        (Some(key), Some(accounts)) => {
            let balance = accounts.balance(key).await.map_err(store_failure)?;
            let subscription = store::credits(balance.subscription_left());
            if key.sandbox {
                (0.0, 0.0, subscription)
            } else {
                (subscription, store::credits(balance.payg_left()), 0.0)
            }
        }
        _ => (state.config.monthly_credits, 0.0, 0.0),
    };
    Ok(json_reply(
        StatusCode::OK,
        json!({"data": {"attributes": {
            "credits": {"total": subscription + payg, "subscription": subscription, "payg": payg, "enterprise": 0.0},
            "api": {"free_calls": free_calls, "sizes": "all"},
        }}}),
    ))
}

/// The simple API: `image` (or `image_file`/`file`), `format`, `channels`, `bg_color`,
/// `size` (longest side) and `crop`.
async fn simple(
    state: &State,
    request: Request<Incoming>,
    key: Option<&Key>,
    body: Claim,
) -> Result<Reply, Failure> {
    let received = Instant::now();
    let form = body::read_form(request, 20 * 1024 * 1024, state.config.body_pace)
        .await
        .map_err(|e| body_failure(e, Dialect::Simple))?;
    let image = ["image", "image_file", "file"]
        .iter()
        .find_map(|name| form.file(name))
        .cloned()
        .ok_or_else(|| Failure::bad_request("missing_image", "No image file provided"))?;
    let edit = cutout_core::edit::simple::parse(form.fields.clone())
        .map_err(|e| Failure::bad_request("validation_error", e.to_string()))?;
    let rendered = render(
        state,
        received,
        body,
        image,
        None,
        edit,
        Charge::new(key, "/v1/remove-background", 1.0, RateCost::Image),
    )
    .await?;
    Ok(image_body(image_reply(&rendered), rendered))
}

#[cfg(test)]
mod tests {
    use cutout_core::Error;
    use cutout_core::edit::FieldError;
    use hyper::StatusCode;

    use super::render_failure;

    /// Each failure maps by its variant to the status and code the API documents (400 for
    /// the request's fault, 503 with Retry-After for the device's state, 500 otherwise).
    #[test]
    fn render_failures_map_by_variant() {
        let cases = [
            (Error::InvalidRoi("is empty"), 400, "invalid_roi", None),
            (
                Error::InvalidParameter(FieldError::new("padding", "leaves no room")),
                400,
                "validation_error",
                None,
            ),
            (
                Error::TooLarge("30 MP".into()),
                400,
                "resolution_too_high",
                None,
            ),
            (
                Error::Decode("truncated".into()),
                400,
                "failed_to_read_image",
                None,
            ),
            (
                Error::UnsupportedFormat("HEIC/HEIF"),
                415,
                "invalid_file_type",
                None,
            ),
            (
                Error::OutOfMemory("4 GB".into()),
                503,
                "out_of_memory",
                Some(5),
            ),
            (
                Error::DeviceLost("reset".into()),
                503,
                "device_lost",
                Some(5),
            ),
            (
                Error::Device("bad binding".into()),
                500,
                "internal_error",
                None,
            ),
            (Error::Encode("png".into()), 500, "internal_error", None),
            (Error::Panicked("a bug".into()), 500, "internal_error", None),
        ];
        for (error, status, code, retry_after) in cases {
            let text = error.to_string();
            let failure = render_failure(error);
            assert_eq!(
                failure.status,
                StatusCode::from_u16(status).unwrap(),
                "{text}"
            );
            assert_eq!(failure.code, code, "{text}");
            assert_eq!(failure.retry_after, retry_after, "{text}");
        }
        let field = render_failure(Error::InvalidParameter(FieldError::new("padding", "x")));
        assert!(field.message.starts_with("padding"), "{}", field.message);
    }
}
