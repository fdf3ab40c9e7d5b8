//! Request bodies into text fields and file parts: multipart, urlencoded or JSON. The
//! size cap is checked against Content-Length before reading, and again while reading.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::Request;
use hyper::body::Incoming;

#[derive(Debug, Default)]
pub struct Form {
    pub fields: Vec<(String, String)>,
    pub files: Vec<(String, Bytes)>,
}

impl Form {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn file(&self, name: &str) -> Option<&Bytes> {
        self.files
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// Fields plus file names (with empty values), as the parameter parsers take them.
    pub fn parameters(&self) -> Vec<(String, String)> {
        let files = self.files.iter().map(|(k, _)| (k.clone(), String::new()));
        self.fields.iter().cloned().chain(files).collect()
    }
}

#[derive(Debug)]
pub enum BodyError {
    TooLarge(u64),
    Unsupported(String),
    Malformed(String),
    /// The client stopped sending, or sends slower than the minimum rate.
    TooSlow(String),
}

/// How slowly a client may send a body.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Longest wait for the next piece of the body.
    pub idle: std::time::Duration,
    /// Bytes per second the body must average once `grace` has passed.
    pub min_rate: u64,
    pub grace: std::time::Duration,
}

pub fn query(request: &Request<Incoming>) -> Vec<(String, String)> {
    request
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

pub async fn read_form(
    request: Request<Incoming>,
    limit: u64,
    pace: Pace,
) -> Result<Form, BodyError> {
    let (parts, body) = request.into_parts();
    let received = parts
        .extensions
        .get::<crate::metrics::Received>()
        .cloned()
        .unwrap_or_default();
    let declared = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(BodyError::TooLarge(limit));
    }
    let mut body = Limited::new(body, limit as usize);
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
    let started = tokio::time::Instant::now();
    loop {
        let frame = match tokio::time::timeout(pace.idle, body.frame()).await {
            Err(_) => {
                return Err(BodyError::TooSlow(format!(
                    "no body data for {} s",
                    pace.idle.as_secs_f32()
                )));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(BodyError::TooLarge(limit));
            }
            Ok(Some(Err(e))) => {
                return Err(BodyError::Malformed(format!(
                    "could not read the body: {e}"
                )));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            received.add(data.len());
            bytes.extend_from_slice(&data);
        }
        let elapsed = started.elapsed();
        if elapsed > pace.grace
            && (bytes.len() as f64) < pace.min_rate as f64 * elapsed.as_secs_f64()
        {
            return Err(BodyError::TooSlow(format!(
                "the body arrives slower than {} bytes/s",
                pace.min_rate
            )));
        }
    }
    let content_type = parts
        .headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    parse(content_type, Bytes::from(bytes)).await
}

/// A whole body, read, into fields and files by its content type.
pub async fn parse(content_type: &str, bytes: Bytes) -> Result<Form, BodyError> {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "multipart/form-data" => multipart(content_type, bytes).await,
        "application/x-www-form-urlencoded" => Ok(Form {
            fields: form_urlencoded::parse(&bytes).into_owned().collect(),
            files: Vec::new(),
        }),
        "application/json" => json(&bytes),
        "" if bytes.is_empty() => Ok(Form::default()),
        other => Err(BodyError::Unsupported(format!(
            "unsupported content type '{other}': send multipart/form-data, application/x-www-form-urlencoded or application/json"
        ))),
    }
}

async fn multipart(content_type: &str, bytes: Bytes) -> Result<Form, BodyError> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| BodyError::Malformed(format!("bad multipart content type: {e}")))?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(bytes) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut form = Form::default();
    let malformed = |e: multer::Error| BodyError::Malformed(format!("bad multipart body: {e}"));
    while let Some(field) = multipart.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or("").to_string();
        let declared_file = field.file_name().is_some()
            || field
                .content_type()
                .is_some_and(|m| m.type_().as_str() != "text");
        let data = field.bytes().await.map_err(malformed)?;
        match (declared_file, std::str::from_utf8(&data)) {
            (false, Ok(text)) => form.fields.push((name, text.to_string())),
            _ => form.files.push((name, data)),
        }
    }
    Ok(form)
}

fn json(bytes: &[u8]) -> Result<Form, BodyError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| BodyError::Malformed(format!("invalid JSON body: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(BodyError::Malformed(
            "the JSON body must be an object".into(),
        ));
    };
    let mut form = Form::default();
    for (name, value) in map {
        let text = match value {
            serde_json::Value::String(s) => s,
            serde_json::Value::Null => continue,
            other => other.to_string(),
        };
        form.fields.push((name, text));
    }
    Ok(form)
}
