//! Responses: images with their headers, and errors in each API dialect's own shape.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::json;

pub type Reply = Response<Full<Bytes>>;

/// Which API's conventions a response follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PhotoRoom `/v1/segment`: `{"detail", "status_code", "type"}`.
    Segment,
    /// PhotoRoom `/v2/edit` and accounts: `{"error": {"message"}}`.
    PhotoRoom,
    /// remove.bg: `{"errors": [{"title", "code", "detail"}]}`.
    RemoveBg,
    /// The simple API and everything else: `{"error": {"code", "message"}}`.
    Simple,
}

/// A request that failed, with the status and machine code it maps to.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub retry_after: Option<u64>,
    /// More headers for the error reply (e.g. `X-RateLimit-*` on 429).
    pub headers: Vec<(&'static str, String)>,
}

impl Failure {
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            retry_after: None,
            headers: Vec::new(),
        }
    }

    pub fn bad_request(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 500 `internal_error`: something on the server's side failed, not the request.
    pub fn internal(message: impl ToString) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            message.to_string(),
        )
    }
}

pub fn json_reply(status: StatusCode, value: serde_json::Value) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(value.to_string())))
        .expect("valid response")
}

pub fn error_reply(dialect: Dialect, failure: &Failure) -> Reply {
    let status = failure.status;
    let body = match dialect {
        Dialect::Segment => json!({
            "detail": failure.message,
            "status_code": status.as_u16(),
            "type": failure.code,
        }),
        Dialect::PhotoRoom if status == StatusCode::PAYMENT_REQUIRED => {
            json!({"error": {"detail": failure.message}})
        }
        Dialect::PhotoRoom => json!({"error": {"message": failure.message}}),
        Dialect::RemoveBg => json!({"errors": [{
            "title": title(status, &failure.code),
            "code": failure.code,
            "detail": failure.message,
        }]}),
        Dialect::Simple => json!({"error": {
            "code": simple_code(status, &failure.code),
            "message": failure.message,
        }}),
    };
    let mut reply = json_reply(status, body);
    let headers = reply.headers_mut();
    if let Some(seconds) = failure.retry_after {
        headers.insert("retry-after", seconds.to_string().parse().expect("digits"));
    }
    for (name, value) in &failure.headers {
        headers.insert(*name, value.parse().expect("header text"));
    }
    reply
}

/// The simple API documents one code per status (and `missing_image`/`image_too_large` for
/// 400).
fn simple_code(status: StatusCode, code: &str) -> &str {
    match (status.as_u16(), code) {
        (400, "missing_image" | "image_too_large") => code,
        (400, "resolution_too_high") => "image_too_large",
        (400, _) => "validation_error",
        (401, _) => "authentication_error",
        (402, _) => "payment_required",
        (429, _) => "rate_limit_exceeded",
        (500, _) => "internal_server_error",
        _ => code,
    }
}

/// remove.bg's documented titles where there is one.
fn title(status: StatusCode, code: &str) -> String {
    match (status.as_u16(), code) {
        (_, "file_too_large") => "File too large".into(),
        (_, "missing_source") => "No image given".into(),
        (_, "auth_failed") => "API Key invalid".into(),
        (403, _) => "Missing API Key".into(),
        (402, _) => "Insufficient credits".into(),
        (429, _) => "Rate limit exceeded".into(),
        (503, _) => "Server busy".into(),
        (s, _) if s >= 500 => "Internal server error".into(),
        _ => "Invalid parameters".into(),
    }
}
