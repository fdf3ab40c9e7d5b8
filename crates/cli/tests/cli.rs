//! The `cutout` binary as a user runs it, on the software adapter.

use std::path::Path;
use std::process::Command;

fn cutout() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cutout"));
    command
        .env("CUTOUT_DEVICE", "cpu")
        .env("CUTOUT_MODELS", "/nonexistent")
        // `cargo xtask test` quiets Mesa's device-select layer for the test processes; the
        // CLI must quiet it on its own.
        .env_remove("NODEVICE_SELECT");
    command
}

fn repository(relative: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

fn photo(name: &str) -> std::path::PathBuf {
    repository("tests/fixtures/images").join(name)
}

#[test]
fn folder_keeps_layout_skips_bad_files_and_fails_at_the_end() {
    let dir = std::env::temp_dir().join(format!("cutout-cli-{}", std::process::id()));
    let input = dir.join("in");
    std::fs::create_dir_all(input.join("nested")).unwrap();
    std::fs::copy(photo("chelsea.jpg"), input.join("a.jpg")).unwrap();
    std::fs::copy(photo("coffee.jpg"), input.join("nested/b.jpg")).unwrap();
    std::fs::write(
        input.join("nested/broken.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    std::fs::write(input.join("notes.txt"), b"ignored").unwrap();

    let output = cutout()
        .args(["remove", "--offline", "--out-dir"])
        .arg(dir.join("out"))
        .arg(&input)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a bad file must make the run fail"
    );
    assert!(stderr.contains("broken.png"), "{stderr}");
    assert!(stderr.contains("1 of 3 images failed"), "{stderr}");

    let a = image::open(dir.join("out/a.png")).unwrap();
    assert_eq!((a.width(), a.height()), (451, 300));
    assert!(a.color().has_alpha());
    let b = image::open(dir.join("out/nested/b.png")).unwrap();
    assert_eq!((b.width(), b.height()), (600, 400));
    assert!(!dir.join("out/nested/broken.png").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn single_file_mask_as_jpeg() {
    let out = std::env::temp_dir().join(format!("cutout-mask-{}.jpg", std::process::id()));
    let status = cutout()
        .args(["remove", "--only-mask", "--format", "jpg", "-o"])
        .arg(&out)
        .arg(photo("chelsea.jpg"))
        .status()
        .unwrap();
    assert!(status.success());
    let mask = image::open(&out).unwrap().into_luma8();
    assert_eq!(mask.dimensions(), (451, 300));
    // The cat fills the middle; the dark right edge is background.
    assert!(mask.get_pixel(200, 150).0[0] > 200);
    assert!(mask.get_pixel(445, 150).0[0] < 50);
    std::fs::remove_file(out).unwrap();
}

#[test]
fn bad_arguments_are_clear_errors() {
    let fails_with = |args: &[&str], message: &str| {
        let output = cutout()
            .args(args)
            .arg(photo("chelsea.jpg"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    };
    fails_with(&["remove", "--bg-color", "nope"], "'nope' is not a colour");
    fails_with(&["remove", "--model", "u3net"], "unknown model 'u3net'");
    fails_with(
        &["remove", "--model", "/nonexistent/mine.onnx"],
        "reading /nonexistent/mine.onnx",
    );
}

#[test]
fn a_model_file_given_by_path_is_recognised_and_preprocessed_by_its_architecture() {
    let dir = std::env::temp_dir().join(format!("cutout-model-path-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mask_with = |model: &Path, out: &str| {
        let output = cutout()
            .args(["remove", "--only-mask", "--offline", "--model"])
            .arg(model)
            .arg("-o")
            .arg(dir.join(out))
            .arg(photo("chelsea.jpg"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert!(output.status.success(), "{stderr}");
        // A headless run that succeeds says nothing that reads as a failure (Mesa's
        // device-select layer used to print "error: XDG_RUNTIME_DIR is invalid").
        assert!(!stderr.contains("error"), "{stderr}");
        let mask = image::open(dir.join(out)).unwrap();
        // An 8-bit greyscale PNG, as rembg and the hosted APIs write masks.
        assert_eq!(mask.color(), image::ColorType::L8);
        (mask.into_luma8(), stderr)
    };
    // The default model's own file, given by path, is a U²-Net: same mask as by name.
    let (by_path, _) = mask_with(&repository("models/u2netp.onnx"), "by-path.png");
    let (by_name, _) = mask_with(Path::new("u2netp"), "by-name.png");
    assert_eq!(by_path, by_name);
    // A stride-2 stem makes it IS-Net (random weights here, so only the shape is checked).
    let (isnet, stderr) = mask_with(
        &repository("tests/fixtures/isnet/isnet-tiny.onnx"),
        "isnet.png",
    );
    assert_eq!(isnet.dimensions(), (451, 300));
    assert!(stderr.contains("isnet_custom"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn models_list_shows_the_embedded_default() {
    let output = cutout().args(["models", "list"]).output().unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("u2netp") && l.contains("embedded")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("u2net ") && l.contains("missing")),
        "{stdout}"
    );
}

/// Runs curl against the server; returns the HTTP status (0 when nothing answered).
fn curl_status(url: &str, args: &[&str]) -> u16 {
    let output = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl is installed");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// SIGTERM with 16 requests in flight: every one of them is answered 200, then the server
/// exits cleanly and stops listening.
#[test]
fn sigterm_finishes_in_flight_requests_then_exits() {
    const IN_FLIGHT: usize = 16;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let data = std::env::temp_dir().join(format!("cutout-cli-term-{}", std::process::id()));
    let mut server = cutout()
        .args([
            "serve",
            "--offline",
            "--no-auth",
            // Room for all 16 at once (each is charged the model's forward), and one batch
            // for all of them that starts once they are all queued (or after 2 s): no
            // request finishes before the last one is queued.
            "--max-inflight-memory",
            "8192",
            "--max-batch",
            "16",
            "--max-wait-ms",
            "2000",
            "--addr",
            &format!("127.0.0.1:{port}"),
        ])
        .env("XDG_DATA_HOME", &data)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let health = format!("{base}/health");
    wait_for("the server starts", 60, || curl_status(&health, &[]) == 200);

    let image = format!("image_file=@{}", photo("coffee.jpg").display());
    let segment = format!("{base}/v1/segment");
    let requests: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (segment, image) = (segment.clone(), image.clone());
            std::thread::spawn(move || curl_status(&segment, &["-F", &image]))
        })
        .collect();
    // Wait until every job is on the queue or being rendered, then ask the server to stop.
    let queued = || {
        let text = curl_text(&health, &[]);
        text.split("\"queued\":")
            .nth(1)
            .and_then(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0usize)
    };
    wait_for("all requests queue", 120, || queued() >= IN_FLIGHT);
    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    let statuses: Vec<u16> = requests.into_iter().map(|r| r.join().unwrap()).collect();
    assert_eq!(
        statuses,
        vec![200; IN_FLIGHT],
        "every in-flight request completes"
    );
    let status = server.wait().unwrap();
    assert!(status.success(), "exits cleanly: {status}");
    assert_eq!(curl_status(&health, &[]), 0, "no longer listening");
    std::fs::remove_dir_all(&data).ok();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits for `condition`, checking every few milliseconds, failing after `seconds`.
fn wait_for(what: &str, seconds: u64, mut condition: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !condition() {
        assert!(started.elapsed().as_secs() < seconds, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn curl_text(url: &str, args: &[&str]) -> String {
    let output = Command::new("curl")
        .arg("-s")
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_server_killed_mid_request_gives_its_credit_holds_back() {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("cutout-cli-kill-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    let store = format!("sqlite://{}", dir.join("cutout.db").display());
    let log = dir.join("log");
    let serve = |port: u16| {
        cutout()
            .args(["serve", "--offline", "--addr", &format!("127.0.0.1:{port}")])
            .args(["--store", &store, "--lease-seconds", "3"])
            .stdout(std::process::Stdio::piped())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .unwrap()
    };
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = serve(port);
    // First start on an empty store: one admin key, printed once to stdout.
    let mut stdout = std::io::BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains("created the admin key"), "{line}");
    let mut key = String::new();
    stdout.read_line(&mut key).unwrap();
    let key = key.trim().to_string();
    assert_eq!(key.len(), 48, "{key}");
    let health = format!("{base}/health");
    wait_for("server did not start", 60, || {
        curl_status(&health, &[]) == 200
    });
    let header = format!("x-api-key: {key}");
    let image = format!("image_file=@{}", photo("coffee.jpg").display());
    let account = |base: &str| curl_text(&format!("{base}/v1/account"), &["-H", &header]);
    assert!(account(&base).contains("\"available\":10000.0"));

    let segment = format!("{base}/v1/segment");
    assert_eq!(curl_status(&segment, &["-H", &header, "-F", &image]), 200);
    let in_flight = {
        let (segment, header, image) = (segment.clone(), header.clone(), image.clone());
        std::thread::spawn(move || curl_status(&segment, &["-H", &header, "-F", &image]))
    };
    // Queued means decoded, so its credit is held: kill the server there.
    wait_for("the request never queued", 30, || {
        curl_text(&health, &[]).contains("\"queued\":1")
    });
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(
        in_flight.join().unwrap(),
        0,
        "no answer from a killed server"
    );

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut restarted = serve(port);
    let health = format!("{base}/health");
    wait_for("server did not restart", 60, || {
        curl_status(&health, &[]) == 200
    });
    // The held credit comes back when the dead server's lease runs out: one image returned,
    // one credit spent.
    wait_for("the dead server's hold was never released", 30, || {
        account(&base).contains("\"available\":9999.0")
    });
    restarted.kill().unwrap();
    let mut printed = String::new();
    std::io::Read::read_to_string(&mut restarted.stdout.take().unwrap(), &mut printed).unwrap();
    restarted.wait().unwrap();
    assert_eq!(printed, "", "no new key when keys exist");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.contains(&key), "the key is never logged");
    std::fs::remove_dir_all(dir).ok();
}

#[path = "../../server/tests/common/mod.rs"]
mod common;

/// A reply's status and headers (names lower-case).
fn curl_headers(url: &str, args: &[&str]) -> (u16, Vec<(String, String)>) {
    let output = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-D", "-"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_lowercase(), value.trim().to_string()))
        })
        .collect();
    (status, headers)
}

/// Two `cutout serve` processes on one PostgreSQL, hammered in parallel on one key: one
/// ledger (a key with 10 credits gets exactly 10 images from the two together, and its
/// balance ends at 0), one rate limit (in each clock minute, named by the replies'
/// `X-RateLimit-Reset`, the two together serve at most the key's limit), and a key revoked
/// with `cutout keys revoke` is refused by both on their next request.
#[test]
fn two_serve_processes_on_one_postgres_share_one_ledger_and_one_rate_limit() {
    let url = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(common::fresh_postgres("cutout_cli_replicas"));
    let create = |args: &[&str]| {
        let output = cutout()
            .args(["keys", "create"])
            .args(args)
            .args(["--store", &url])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    let credits_key = create(&["credits", "--credits", "10", "--rate-limit", "1000"]);
    let rate_key = create(&["rate", "--rate-limit", "8"]);
    /// Killed when the test ends, whatever happens in it.
    struct Replica(std::process::Child);
    impl Drop for Replica {
        fn drop(&mut self) {
            self.0.kill().ok();
            self.0.wait().ok();
        }
    }
    let replicas: Vec<(Replica, String)> = (0..2)
        .map(|_| {
            let port = free_port();
            let server = cutout()
                .args(["serve", "--offline", "--addr", &format!("127.0.0.1:{port}")])
                .args(["--store", &url])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            (Replica(server), format!("http://127.0.0.1:{port}"))
        })
        .collect();
    for (_, base) in &replicas {
        wait_for("a replica did not start", 60, || {
            curl_status(&format!("{base}/health"), &[]) == 200
        });
    }
    let image = format!("image_file=@{}", photo("coffee.jpg").display());
    let hammer = |key: &str, requests: usize| -> Vec<(u16, Vec<(String, String)>)> {
        let header = format!("x-api-key: {key}");
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..requests)
                .map(|i| {
                    let url = format!("{}/v1.0/removebg", replicas[i % 2].1);
                    let (header, image) = (&header, &image);
                    scope.spawn(move || {
                        curl_headers(&url, &["-H", header, "-F", image, "-F", "size=full"])
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };

    let replies = hammer(&credits_key, 40);
    let count = |replies: &[(u16, Vec<(String, String)>)], status| {
        replies.iter().filter(|(s, _)| *s == status).count()
    };
    assert_eq!((count(&replies, 200), count(&replies, 402)), (10, 30));
    for (_, base) in &replicas {
        let account = curl_text(
            &format!("{base}/v1/account"),
            &["-H", &format!("x-api-key: {credits_key}")],
        );
        assert!(account.contains("\"available\":0.0"), "{account}");
    }

    let replies = hammer(&rate_key, 24);
    let mut served_per_minute = std::collections::BTreeMap::<String, usize>::new();
    for (status, headers) in &replies {
        assert!(matches!(status, 200 | 429), "status {status}");
        if *status == 200 {
            let reset = headers.iter().find(|(name, _)| name == "x-ratelimit-reset");
            *served_per_minute
                .entry(reset.expect("X-RateLimit-Reset").1.clone())
                .or_default() += 1;
        }
    }
    // The hammer takes seconds: one clock minute, or two if one ended meanwhile.
    assert!(
        (1..=2).contains(&served_per_minute.len()),
        "{served_per_minute:?}"
    );
    assert!(
        served_per_minute.values().all(|&served| served <= 8),
        "{served_per_minute:?}"
    );
    assert!(
        count(&replies, 200) >= 8 && count(&replies, 429) >= 24 - 8 * served_per_minute.len(),
        "{served_per_minute:?}"
    );

    let revoked = cutout()
        .args(["keys", "revoke", "rate", "--store", &url])
        .output()
        .unwrap();
    assert!(revoked.status.success(), "{revoked:?}");
    for (_, base) in &replicas {
        let status = curl_status(
            &format!("{base}/v1.0/account"),
            &["-H", &format!("x-api-key: {rate_key}")],
        );
        assert_eq!(status, 403, "the revoked key at {base}");
    }
}

/// The mean difference of two RGBA images' premultiplied pixels, in levels (0..255).
fn premultiplied_mean_difference(a: &std::path::Path, b: &std::path::Path) -> f64 {
    let a = image::open(a).unwrap().into_rgba8();
    let b = image::open(b).unwrap().into_rgba8();
    assert_eq!(a.dimensions(), b.dimensions());
    let premultiplied = |p: &image::Rgba<u8>| {
        let alpha = p.0[3] as f64 / 255.0;
        [
            p.0[0] as f64 * alpha,
            p.0[1] as f64 * alpha,
            p.0[2] as f64 * alpha,
            p.0[3] as f64,
        ]
    };
    let total: f64 = a
        .pixels()
        .zip(b.pixels())
        .map(|(x, y)| {
            let (x, y) = (premultiplied(x), premultiplied(y));
            (0..4).map(|c| (x[c] - y[c]).abs()).sum::<f64>()
        })
        .sum();
    total / (a.pixels().len() * 4) as f64
}

/// One pipeline: `cutout remove` gives what `POST /v1/segment` gives and `cutout edit` what
/// `POST /v2/edit` gives, for the same options, and masks are 8-bit greyscale PNGs.
#[test]
fn the_cli_and_the_server_give_the_same_pixels() {
    let dir = std::env::temp_dir().join(format!("cutout-cli-same-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = cutout()
        .args(["serve", "--offline", "--no-auth", "--addr"])
        .arg(format!("127.0.0.1:{port}"))
        .env("XDG_DATA_HOME", &dir)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let health = format!("{base}/health");
    wait_for("the server starts", 60, || curl_status(&health, &[]) == 200);

    let photo = photo("coffee.jpg");
    let cases: [(&str, &[&str], &str, &[&str]); 4] = [
        ("plain", &["remove"], "/v1/segment", &[]),
        (
            "on-red",
            &["remove", "--bg-color", "red"],
            "/v1/segment",
            &["bg_color=red"],
        ),
        (
            "mask",
            &["remove", "--only-mask"],
            "/v1.0/removebg",
            &["channels=alpha", "size=full", "format=png"],
        ),
        (
            "edit",
            &[
                "edit",
                "--set",
                "background.color=FFFFFF",
                "--set",
                "shadow.mode=ai.soft",
                "--set",
                "padding=0.1",
            ],
            "/v2/edit",
            &[
                "background.color=FFFFFF",
                "shadow.mode=ai.soft",
                "padding=0.1",
            ],
        ),
    ];
    for (name, cli, route, fields) in cases {
        let from_cli = dir.join(format!("{name}.cli.png"));
        let status = cutout()
            .args(cli)
            .arg(&photo)
            .arg("-o")
            .arg(&from_cli)
            .arg("--offline")
            .status()
            .unwrap();
        assert!(status.success(), "{name}: cutout {cli:?}");

        let from_server = dir.join(format!("{name}.http.png"));
        let image_field = match route {
            "/v2/edit" => format!("imageFile=@{}", photo.display()),
            _ => format!("image_file=@{}", photo.display()),
        };
        let mut curl = Command::new("curl");
        curl.args(["-s", "-w", "%{http_code}", "-o"])
            .arg(&from_server)
            .args(["-F", &image_field]);
        for field in fields {
            curl.args(["-F", field]);
        }
        let output = curl.arg(format!("{base}{route}")).output().unwrap();
        assert_eq!(output.stdout, b"200", "{name}: {route}");

        let difference = premultiplied_mean_difference(&from_cli, &from_server);
        println!("{name}: mean premultiplied difference {difference:.3}/255");
        assert!(difference <= 0.5, "{name}: {difference}/255");
        if name == "mask" {
            for file in [&from_cli, &from_server] {
                let decoded = image::open(file).unwrap();
                assert_eq!(decoded.color(), image::ColorType::L8, "{}", file.display());
            }
        }
    }
    server.kill().unwrap();
    server.wait().unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut files: Vec<String> = walk(dir)
        .into_iter()
        .map(|path| path.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    files.sort();
    files
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// The server writes no image anywhere: after requests on every image route, with debug
/// logging on, its working directory and temporary directory are empty and its data
/// directory holds only the accounts database; the API key appears in no log line.
#[test]
fn the_server_writes_no_image_to_disk_and_logs_no_key() {
    use std::io::BufRead;
    let root = std::env::temp_dir().join(format!("cutout-cli-disk-{}", std::process::id()));
    std::fs::remove_dir_all(&root).ok();
    let (cwd, tmp, data) = (root.join("cwd"), root.join("tmp"), root.join("data"));
    for dir in [&cwd, &tmp, &data] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let log = root.join("log");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = cutout()
        .args(["serve", "--offline", "--addr", &format!("127.0.0.1:{port}")])
        .current_dir(&cwd)
        .env("TMPDIR", &tmp)
        .env("XDG_DATA_HOME", &data)
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let mut key = String::new();
    stdout.read_line(&mut key).unwrap();
    let key = key.trim().to_string();
    let health = format!("{base}/health");
    wait_for("the server starts", 60, || curl_status(&health, &[]) == 200);

    let header = format!("x-api-key: {key}");
    let photo = photo("coffee.jpg");
    let routes: [(&str, String, &[&str]); 4] = [
        (
            "/v1/segment",
            format!("image_file=@{}", photo.display()),
            &[],
        ),
        (
            "/v2/edit",
            format!("imageFile=@{}", photo.display()),
            &["background.color=FFFFFF", "shadow.mode=ai.soft"],
        ),
        (
            "/v1.0/removebg",
            format!("image_file=@{}", photo.display()),
            &["format=zip"],
        ),
        (
            "/v1/remove-background",
            format!("image=@{}", photo.display()),
            &["format=webp"],
        ),
    ];
    for (route, image, fields) in routes {
        let mut args = vec!["-H", &header, "-F", &image];
        for field in fields {
            args.extend(["-F", field]);
        }
        assert_eq!(
            curl_status(&format!("{base}{route}"), &args),
            200,
            "{route}"
        );
    }
    server.kill().unwrap();
    server.wait().unwrap();

    assert_eq!(files_under(&cwd), Vec::<String>::new(), "working directory");
    assert_eq!(
        files_under(&tmp),
        Vec::<String>::new(),
        "temporary directory"
    );
    for file in files_under(&data) {
        assert!(
            file.starts_with("cutout/cutout.db"),
            "only the accounts database in the data directory: {file}"
        );
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("DEBUG"), "debug logging was on");
    assert!(!logged.contains(&key), "the key is never logged");
    std::fs::remove_dir_all(&root).ok();
}
