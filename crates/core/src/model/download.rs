//! Fetching a model file: streamed to `FILE.partial` beside its destination, resumed with an
//! HTTP Range request after a dropped connection, retried, checked, and renamed into place
//! only once the check passes, so the model folder never holds a half-written or wrong file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};
use sha2::Sha256;

use crate::error::{Error, Result};

/// What the finished file must hash to.
#[derive(Debug, Clone, PartialEq)]
pub enum Checksum {
    /// Published by upstream (rembg's sessions publish an md5 for every file they download).
    Md5(String),
    /// Pinned by the deployment (`--sha256`).
    Sha256(String),
    /// Nothing published: the file is checked by loading it, and its sha256 reported.
    Unpublished,
}

pub struct Fetch<'a> {
    pub url: &'a str,
    pub destination: &'a Path,
    pub checksum: Checksum,
    /// Connections tried before giving up; each resumes where the last one stopped.
    pub attempts: u32,
    /// Wait before retry `n` is `n` times this.
    pub retry_delay: Duration,
    /// Called with the bytes on disk so far and the total, when the server says it.
    pub progress: &'a mut dyn FnMut(u64, Option<u64>),
}

/// The fetched file's digests.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    pub bytes: u64,
    pub md5: String,
    pub sha256: String,
}

impl Fetch<'_> {
    pub fn run(self) -> Result<Fetched> {
        let Fetch {
            url,
            destination,
            checksum,
            attempts,
            retry_delay,
            progress,
        } = self;
        let partial = partial_path(destination);
        if let Some(dir) = destination.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut last_error = String::new();
        for attempt in 1..=attempts.max(1) {
            if attempt > 1 {
                log::warn!("{url}: {last_error}; retrying ({attempt}/{attempts})");
                std::thread::sleep(retry_delay * (attempt - 1));
            }
            match transfer(url, &partial, progress) {
                Ok(()) => {
                    let fetched = digests(&partial)?;
                    if let Err(error) = check(&checksum, &fetched, destination) {
                        std::fs::remove_file(&partial)?;
                        return Err(error);
                    }
                    std::fs::rename(&partial, destination)?;
                    return Ok(fetched);
                }
                Err(Transfer::Fatal(error)) => return Err(error),
                Err(Transfer::Retry(error)) => last_error = error,
            }
        }
        let kept = match partial.exists() {
            true => format!("; {} kept to resume", partial.display()),
            false => String::new(),
        };
        Err(Error::Download(format!(
            "{url}: {last_error} (gave up after {attempts} attempts{kept})"
        )))
    }
}

pub fn partial_path(destination: &Path) -> PathBuf {
    let mut name = destination.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    destination.with_file_name(name)
}

enum Transfer {
    /// Worth another connection: the network failed, or the server did (5xx).
    Retry(String),
    Fatal(Error),
}

/// One connection: asks for the bytes `partial` lacks and appends them.
fn transfer(
    url: &str,
    partial: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<(), Transfer> {
    let io = |e: std::io::Error| Transfer::Fatal(Error::from(e));
    let have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    let mut request = ureq::get(url);
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let mut response = match request.call() {
        Ok(response) => response,
        Err(ureq::Error::StatusCode(416)) if have > 0 => {
            // Nothing left to send: the partial file is whole (the checksum decides).
            return Ok(());
        }
        Err(ureq::Error::StatusCode(code)) if code >= 500 => {
            return Err(Transfer::Retry(format!("server error {code}")));
        }
        Err(ureq::Error::StatusCode(code)) => {
            return Err(Transfer::Fatal(Error::Download(format!(
                "{url}: HTTP {code}"
            ))));
        }
        Err(error) => return Err(Transfer::Retry(error.to_string())),
    };
    // 206 continues the partial file; 200 is the whole file (a server that ignores Range).
    let resumed = response.status().as_u16() == 206;
    let mut file = if resumed {
        OpenOptions::new().append(true).open(partial).map_err(io)?
    } else {
        File::create(partial).map_err(io)?
    };
    let mut done = if resumed { have } else { 0 };
    let total = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map(|length| done + length);
    progress(done, total);
    let mut reader = response.body_mut().as_reader();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) => {
                file.flush().map_err(io)?;
                return Err(Transfer::Retry(format!(
                    "connection lost after {done} bytes: {error}"
                )));
            }
        };
        file.write_all(&buffer[..n]).map_err(io)?;
        done += n as u64;
        progress(done, total);
    }
    file.sync_all().map_err(io)?;
    Ok(())
}

fn digests(path: &Path) -> Result<Fetched> {
    let mut file = File::open(path)?;
    let (mut md5, mut sha256) = (Md5::new(), Sha256::new());
    let mut buffer = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        md5.update(&buffer[..n]);
        sha256.update(&buffer[..n]);
        bytes += n as u64;
    }
    Ok(Fetched {
        bytes,
        md5: hex(&md5.finalize()),
        sha256: hex(&sha256.finalize()),
    })
}

fn check(checksum: &Checksum, fetched: &Fetched, destination: &Path) -> Result<()> {
    let (kind, found, expected) = match checksum {
        Checksum::Md5(expected) => ("md5", &fetched.md5, expected),
        Checksum::Sha256(expected) => ("sha256", &fetched.sha256, expected),
        Checksum::Unpublished => return Ok(()),
    };
    if !found.eq_ignore_ascii_case(expected) {
        return Err(Error::ChecksumMismatch {
            file: destination.display().to_string(),
            kind,
            found: found.clone(),
            expected: expected.clone(),
        });
    }
    Ok(())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    //! Against a loopback HTTP server scripted per connection.

    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// How the server answers one connection.
    enum Reply {
        /// `200` with the whole body announced, then the connection dropped after `n` bytes.
        DropAfter(usize),
        /// Honours a Range request with `206`, or sends everything with `200`.
        Serve,
        /// `200` with the whole body, ignoring any Range.
        IgnoreRange,
    }

    fn body() -> Vec<u8> {
        (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Serves `replies` in order, one per connection; returns the address and a channel of
    /// the Range header each request carried.
    fn server(replies: Vec<Reply>) -> (String, mpsc::Receiver<Option<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("http://{}/model.bin", listener.local_addr().unwrap());
        let (ranges, received) = mpsc::channel();
        std::thread::spawn(move || {
            let body = body();
            for reply in replies {
                let (mut stream, _) = listener.accept().unwrap();
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut range = None;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        range = Some(value.trim().trim_end_matches('-').to_string());
                    }
                }
                let _ = ranges.send(range.clone()); // a test may not listen
                let start: usize = match (&reply, &range) {
                    (Reply::Serve, Some(start)) => start.parse().unwrap(),
                    _ => 0,
                };
                let head = if start > 0 {
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
                        body.len() - start,
                        body.len() - 1,
                        body.len()
                    )
                } else {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                };
                stream.write_all(head.as_bytes()).unwrap();
                let end = match reply {
                    Reply::DropAfter(n) => n,
                    _ => body.len(),
                };
                stream.write_all(&body[start..end]).unwrap();
                stream.flush().unwrap();
            }
        });
        (address, received)
    }

    fn fetch(url: &str, destination: &Path, checksum: Checksum) -> Result<Fetched> {
        let mut calls = 0;
        Fetch {
            url,
            destination,
            checksum,
            attempts: 3,
            retry_delay: Duration::ZERO,
            progress: &mut |_, _| calls += 1,
        }
        .run()
    }

    fn md5_of(bytes: &[u8]) -> String {
        hex(&Md5::digest(bytes))
    }

    #[test]
    fn a_dropped_connection_resumes_with_a_range_request() {
        let (url, ranges) = server(vec![Reply::DropAfter(80_000), Reply::Serve]);
        let dir = tempdir("resume");
        let destination = dir.join("model.bin");
        let fetched = fetch(&url, &destination, Checksum::Md5(md5_of(&body()))).unwrap();
        assert_eq!(std::fs::read(&destination).unwrap(), body());
        assert_eq!(fetched.bytes, body().len() as u64);
        assert_eq!(ranges.recv().unwrap(), None);
        assert_eq!(ranges.recv().unwrap(), Some("80000".to_string()));
        assert!(!partial_path(&destination).exists());
    }

    #[test]
    fn a_server_that_ignores_range_restarts_the_file() {
        let (url, ranges) = server(vec![Reply::DropAfter(50_000), Reply::IgnoreRange]);
        let dir = tempdir("ignore-range");
        let destination = dir.join("model.bin");
        fetch(&url, &destination, Checksum::Md5(md5_of(&body()))).unwrap();
        assert_eq!(std::fs::read(&destination).unwrap(), body());
        assert_eq!(ranges.recv().unwrap(), None);
        assert_eq!(ranges.recv().unwrap(), Some("50000".to_string()));
    }

    #[test]
    fn a_wrong_checksum_leaves_nothing_behind() {
        let (url, _) = server(vec![Reply::Serve]);
        let dir = tempdir("checksum");
        let destination = dir.join("model.bin");
        let wrong = md5_of(b"another file");
        match fetch(&url, &destination, Checksum::Md5(wrong.clone())) {
            Err(Error::ChecksumMismatch {
                kind,
                found,
                expected,
                ..
            }) => {
                assert_eq!((kind, found, expected), ("md5", md5_of(&body()), wrong));
            }
            other => panic!("expected a checksum mismatch, got {other:?}"),
        }
        assert!(!destination.exists());
        assert!(!partial_path(&destination).exists());
    }

    #[test]
    fn a_pinned_sha256_is_checked_and_reported() {
        let (url, _) = server(vec![Reply::Serve, Reply::Serve]);
        let dir = tempdir("sha256");
        let destination = dir.join("model.bin");
        let sha256 = hex(&Sha256::digest(body()));
        let fetched = fetch(&url, &destination, Checksum::Unpublished).unwrap();
        assert_eq!(fetched.sha256, sha256);
        std::fs::remove_file(&destination).unwrap();
        let error = fetch(&url, &destination, Checksum::Sha256("00".repeat(32))).unwrap_err();
        assert!(matches!(
            error,
            Error::ChecksumMismatch { kind: "sha256", .. }
        ));
        assert!(!destination.exists());
    }

    #[test]
    fn giving_up_keeps_the_partial_file_to_resume() {
        let replies = (0..3).map(|_| Reply::DropAfter(30_000)).collect();
        let (url, _) = server(replies);
        let dir = tempdir("give-up");
        let destination = dir.join("model.bin");
        let error = fetch(&url, &destination, Checksum::Md5(md5_of(&body()))).unwrap_err();
        assert!(matches!(error, Error::Download(_)), "{error:?}");
        assert!(!destination.exists());
        assert!(partial_path(&destination).exists());
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("cutout-download-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
