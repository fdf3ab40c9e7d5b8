//! The server over real HTTP on loopback: every endpoint, the reference documents' curl
//! examples with only the host changed, and bad input of each kind.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use cutout_core::edit::Editor;
use cutout_core::gpu::{DevicePreference, Gpu};
use cutout_server::Config;
use cutout_server::store::{self, NewKey, Store};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new(DevicePreference::Cpu).expect("software adapter"))
}

/// Starts a server on its own runtime thread and returns its address.
fn start(config: Config) -> SocketAddr {
    start_with_store(config, None).addr
}

/// A server with accounts in the store at `url` (opened on the server's runtime).
struct Replica {
    addr: SocketAddr,
    accounts: Option<std::sync::Arc<dyn Store>>,
    runtime: tokio::runtime::Handle,
}

impl Replica {
    fn store(&self) -> &dyn Store {
        self.accounts.as_deref().expect("a server with accounts")
    }

    /// Runs `work` on the replica's runtime and waits for it.
    fn block_on<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(work)
    }
}

fn start_with_store(config: Config, url: Option<String>) -> Replica {
    start_with_editor(Editor::load(gpu(), "u2netp", false).unwrap(), config, url)
}

fn start_with_editor(editor: Editor, mut config: Config, url: Option<String>) -> Replica {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let handle = runtime.handle().clone();
        runtime.block_on(async move {
            let store = match url {
                Some(url) => Some(store::open(&url).await.unwrap()),
                None => None,
            };
            config.store = store.clone();
            let server = cutout_server::start("127.0.0.1:0".parse().unwrap(), editor, config)
                .await
                .unwrap();
            tx.send((server.addr, store, handle)).unwrap();
            std::future::pending::<()>().await;
        });
    });
    let (addr, store, runtime) = rx.recv().unwrap();
    Replica {
        addr,
        accounts: store,
        runtime,
    }
}

/// A fresh SQLite store for one test.
fn sqlite_url(test: &str) -> String {
    let dir = std::env::temp_dir().join(format!("cutout-http-db-{test}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    format!("sqlite://{}", dir.join("cutout.db").display())
}

/// Creates a key in the replica's store and returns it.
fn create_key(replica: &Replica, new: NewKey) -> String {
    let key = cutout_server::keys::generate(new.sandbox);
    replica
        .block_on(
            replica
                .store()
                .create_key(&new, &cutout_server::keys::hash(&key), 1_700_000_000),
        )
        .unwrap();
    key
}

fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| start(Config::default()))
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Runs curl with `args` against `path` on the server, returning status, headers and body.
fn curl(addr: SocketAddr, path: &str, args: &[&str]) -> Reply {
    let dir = std::env::temp_dir().join(format!(
        "cutout-http-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let headers = dir.join("headers");
    let body = dir.join("body");
    let url = format!("http://{addr}{path}");
    let output = Command::new("curl")
        .args(["-s", "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code}"])
        .args(args)
        .arg(&url)
        .output()
        .expect("curl is installed");
    let status: u16 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let header_text = std::fs::read_to_string(&headers).unwrap_or_default();
    let headers = header_text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let body = std::fs::read(&body).unwrap_or_default();
    std::fs::remove_dir_all(&dir).ok();
    Reply {
        status,
        headers,
        body,
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn photo() -> String {
    format!("@{}", fixture("images/chelsea.jpg").display())
}

#[test]
fn segment_returns_a_cutout_with_headers() {
    let image = format!("image_file={}", photo());
    let reply = curl(
        server(),
        "/v1/segment",
        &["-H", "x-api-key: anything", "-F", &image],
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.header("content-type"), Some("image/png"));
    let decoded = image::load_from_memory(&reply.body).unwrap().into_rgba8();
    assert_eq!(
        Some(decoded.width().to_string().as_str()),
        reply.header("x-image-width")
    );
    assert!(decoded.pixels().any(|p| p.0[3] == 0) && decoded.pixels().any(|p| p.0[3] == 255));
    for name in [
        "x-request-id",
        "x-processing-time-ms",
        "x-foreground-top",
        "x-foreground-width",
        "x-credits-charged",
    ] {
        assert!(reply.header(name).is_some(), "missing {name}");
    }
    let score: f32 = reply
        .header("x-uncertainty-score")
        .unwrap()
        .parse()
        .unwrap();
    assert!((0.0..=1.0).contains(&score));
}

#[test]
fn segment_preview_alpha_jpg_and_crop() {
    let image = format!("image_file={}", photo());
    let reply = curl(
        server(),
        "/v1/segment",
        &[
            "-F",
            &image,
            "-F",
            "size=preview",
            "-F",
            "channels=alpha",
            "-F",
            "crop=true",
        ],
    );
    assert_eq!(reply.status, 200);
    let decoded = image::load_from_memory(&reply.body).unwrap();
    assert!(decoded.width() as u64 * decoded.height() as u64 <= 250_000);
    assert_eq!(reply.header("x-credits-charged"), Some("0.25"));
    assert_eq!(decoded.color(), image::ColorType::L8, "alpha channel only");
}

#[test]
fn segment_errors_use_its_shape() {
    let reply = curl(server(), "/v1/segment", &["-F", "format=png"]);
    assert_eq!(reply.status, 400);
    let body = reply.json();
    assert_eq!(body["type"], "missing_image");
    assert_eq!(body["status_code"], 400);
    let image = format!("image_file={}", photo());
    let reply = curl(server(), "/v1/segment", &["-F", &image, "-F", "size=giant"]);
    assert_eq!(reply.status, 400);
    assert!(reply.json()["detail"].as_str().unwrap().contains("size"));
}

#[test]
fn v2_edit_post_places_the_subject_on_a_white_square() {
    // The guide's example, as multipart.
    let image = format!("imageFile={}", photo());
    let reply = curl(
        server(),
        "/v2/edit",
        &[
            "-H",
            "x-api-key: YOUR_API_KEY",
            "-F",
            &image,
            "-F",
            "background.color=FFFFFF",
            "-F",
            "outputSize=400x400",
            "-F",
            "padding=0.1",
            "-F",
            "shadow.mode=ai.soft",
            "-F",
            "export.format=jpeg",
        ],
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.header("content-type"), Some("image/jpeg"));
    let decoded = image::load_from_memory(&reply.body).unwrap().into_rgb8();
    assert_eq!(decoded.dimensions(), (400, 400));
    let corner = decoded.get_pixel(1, 1).0;
    assert!(corner.iter().all(|&c| c >= 250), "white corner {corner:?}");
}

#[test]
fn v2_edit_rejects_generative_unknown_and_out_of_range_parameters() {
    let image = format!("imageFile={}", photo());
    for (field, value) in [
        ("background.prompt", "a beach"),
        ("beautify.mode", "ai.auto"),
        ("upscale.mode", "ai.fast"),
        ("background.blur.radius", "0.5"),
        ("outline.width", "0.3"),
        ("padding", "0.7"),
        ("colour", "red"),
    ] {
        let set = format!("{field}={value}");
        let reply = curl(server(), "/v2/edit", &["-F", &image, "-F", &set]);
        assert_eq!(reply.status, 400, "{field}");
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(message.starts_with(field), "{field}: {message}");
    }
    let reply = curl(
        server(),
        "/v2/edit",
        &[
            "-G",
            "--data-urlencode",
            "imageUrl=https://example.com/a.jpg",
            "--data-urlencode",
            "removeBackground=false",
            "--data-urlencode",
            "background.imageUrl=https://example.com/b.jpg",
        ],
    );
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("removeBackground")
    );
}

#[test]
fn v2_edit_get_refuses_private_urls() {
    let target = format!("imageUrl=http://{}/openapi.json", server());
    let reply = curl(server(), "/v2/edit", &["-G", "--data-urlencode", &target]);
    assert_eq!(reply.status, 400);
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("non-public"), "{message}");
    let reply = curl(
        server(),
        "/v2/edit",
        &["-G", "--data-urlencode", "imageUrl=file:///etc/passwd"],
    );
    assert_eq!(reply.status, 400);
}

#[test]
fn removebg_json_result_and_headers() {
    use base64::Engine;
    let bytes = std::fs::read(fixture("images/chelsea.jpg")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let body = serde_json::json!({"image_file_b64": b64, "size": "preview", "type": "animal", "crop": true}).to_string();
    let reply = curl(
        server(),
        "/v1.0/removebg",
        &[
            "-H",
            "X-Api-Key: INSERT_YOUR_API_KEY_HERE",
            "-H",
            "Accept: application/json",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
        ],
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let json = reply.json();
    let result = base64::engine::general_purpose::STANDARD
        .decode(json["data"]["result_b64"].as_str().unwrap())
        .unwrap();
    let decoded = image::load_from_memory(&result).unwrap();
    assert_eq!(json["data"]["foreground_width"], decoded.width());
    assert_eq!(reply.header("x-type"), Some("animal"));
    assert_eq!(reply.header("x-credits-charged"), Some("0.25"));
}

#[test]
fn removebg_multipart_zip() {
    let image = format!("image_file={}", photo());
    let reply = curl(
        server(),
        "/v1.0/removebg",
        &["-F", &image, "-F", "size=auto", "-F", "format=zip"],
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/zip"));
    assert_eq!(&reply.body[..4], b"PK\x03\x04");
    let text = String::from_utf8_lossy(&reply.body);
    assert!(text.contains("color.jpg") && text.contains("alpha.png"));
}

#[test]
fn removebg_errors_use_its_shape() {
    let image = format!("image_file={}", photo());
    let cases: [(&[&str], &str); 6] = [
        (&["-F", "size=auto"], "missing_source"),
        // Known to be wrong only once the image (451×300) is decoded.
        (&["-F", &image, "-F", "roi=0 0 600px 300px"], "invalid_roi"),
        (
            &["-F", &image, "-F", "roi=200px 0 100px 300px"],
            "invalid_roi",
        ),
        (&["-F", &image, "-F", "scale=5%"], "invalid_scale"),
        (
            &[
                "-F",
                &image,
                "-F",
                "bg_color=fff",
                "-F",
                "bg_image_url=https://example.com/b.jpg",
            ],
            "multiple_bg_sources",
        ),
        (
            &["-F", &image, "-F", "image_url=https://example.com/a.jpg"],
            "multiple_sources",
        ),
    ];
    for (args, code) in cases {
        let reply = curl(server(), "/v1.0/removebg", args);
        assert_eq!(reply.status, 400, "{code}");
        let json = reply.json();
        assert_eq!(json["errors"][0]["code"], code);
        assert!(json["errors"][0]["title"].is_string());
    }
}

#[test]
fn bad_bodies_are_refused_and_the_server_keeps_serving() {
    // Corrupt and truncated images.
    let corrupt = format!(
        "image_file=@{};type=image/jpeg",
        fixture("decode/truncated.jpg").display()
    );
    let reply = curl(server(), "/v1/segment", &["-F", &corrupt]);
    assert_eq!(
        reply.status,
        400,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    // Declared too large: refused from the header, without reading the body.
    let reply = curl(
        server(),
        "/v1/segment",
        &[
            "-H",
            "Content-Length: 999999999",
            "-H",
            "Content-Type: multipart/form-data; boundary=x",
            "--data-binary",
            "x",
            "--max-time",
            "5",
        ],
    );
    assert_eq!(reply.status, 413);
    // Unsupported content type.
    let reply = curl(
        server(),
        "/v1.0/removebg",
        &["-H", "Content-Type: text/plain", "--data-binary", "hello"],
    );
    assert_eq!(reply.status, 415);
    // Unknown path.
    assert_eq!(curl(server(), "/nope", &[]).status, 404);
    // Still serving.
    let image = format!("image_file={}", photo());
    assert_eq!(
        curl(
            server(),
            "/v1/segment",
            &["-F", &image, "-F", "size=preview"]
        )
        .status,
        200
    );
}

#[test]
fn account_endpoints_have_the_documented_shapes() {
    let v1 = curl(server(), "/v1/account", &[]).json();
    assert!(v1["credits"]["available"].is_number() && v1["credits"]["subscription"].is_number());
    let v2 = curl(server(), "/v2/account", &[]).json();
    assert!(v2["images"]["available"].is_number() && v2["plan"].is_string());
    let removebg = curl(server(), "/v1.0/account", &[]).json();
    let attributes = &removebg["data"]["attributes"];
    for key in ["total", "subscription", "payg", "enterprise"] {
        assert!(attributes["credits"][key].is_number(), "{key}");
    }
    assert_eq!(attributes["api"]["sizes"], "all");
}

/// The documented GET /v2/edit query parameters (name, type, minimum, maximum), extracted
/// from PhotoRoom's API reference by `tests/fixtures/make_api_contract.py`.
fn documented_v2_parameters() -> Vec<(String, String, Option<f64>, Option<f64>)> {
    std::fs::read_to_string(fixture("api-contract/v2-edit-query.tsv"))
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let bound = |text: &str| text.parse::<f64>().ok();
            (
                fields[0].to_string(),
                fields[1].to_string(),
                bound(fields[2]),
                bound(fields[3]),
            )
        })
        .collect()
}

/// Against the documented contract, not against itself: every query parameter PhotoRoom
/// documents for GET /v2/edit is either accepted (listed in /openapi.json, with the
/// documented minimum and maximum where the documents give them) or refused by name with a
/// 400 that says why (the generative features), never silently ignored.
#[test]
fn openapi_and_the_parser_follow_the_documented_v2_parameters() {
    use cutout_core::edit::params::Kind;
    use cutout_core::edit::photoroom::{V2_EDIT, parse_v2_edit};
    let doc = curl(server(), "/openapi.json", &[]).json();
    let listed = doc["paths"]["/v2/edit"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .clone();
    let documented = documented_v2_parameters();
    assert!(documented.len() >= 70, "{} parameters", documented.len());
    let (mut accepted, mut refused) = (0, 0);
    for (name, kind, min, max) in &documented {
        match V2_EDIT.iter().find(|p| p.name == name) {
            Some(param) => {
                accepted += 1;
                let entry = listed
                    .iter()
                    .find(|p| p["name"] == name.as_str())
                    .unwrap_or_else(|| panic!("{name} is accepted but not in /openapi.json"));
                if let Kind::Number {
                    min: ours_min,
                    max: ours_max,
                } = param.kind
                {
                    if let Some(min) = min {
                        assert_eq!(ours_min, *min, "{name}: minimum");
                        assert_eq!(
                            entry["schema"]["minimum"], *min,
                            "{name}: documented minimum"
                        );
                    }
                    if let Some(max) = max {
                        assert_eq!(ours_max, *max, "{name}: maximum");
                        assert_eq!(
                            entry["schema"]["maximum"], *max,
                            "{name}: documented maximum"
                        );
                    }
                } else {
                    assert!(
                        min.is_none() && max.is_none() || kind == "number",
                        "{name}: documented bounds {min:?}..{max:?} but parsed as {:?}",
                        param.kind
                    );
                }
            }
            None => {
                refused += 1;
                let error = parse_v2_edit(vec![(name.clone(), "1".into())]).expect_err(&format!(
                    "{name} is documented, not accepted, and not refused"
                ));
                assert_eq!(&error.field, name, "the refusal names the parameter");
            }
        }
    }
    println!("{accepted} documented parameters accepted, {refused} refused by name");
    assert!(doc["paths"]["/v1.0/removebg"]["post"].is_object());
    // The test server runs the default model.
    assert_eq!(doc["info"]["x-cutout-model"]["name"], "u2netp");
    assert_eq!(doc["info"]["x-cutout-model"]["inputSize"], 320);
    assert_eq!(
        doc["info"]["x-cutout-limits"]["maxUploadBytes"],
        30 * 1024 * 1024
    );
}

#[test]
fn keys_are_required_and_revocation_is_immediate() {
    let replica = start_with_store(Config::default(), Some(sqlite_url("keys")));
    let key = create_key(&replica, NewKey::named("shop"));
    let addr = replica.addr;
    let missing = curl(addr, "/v1.0/account", &[]);
    assert_eq!(missing.status, 403);
    assert_eq!(missing.json()["errors"][0]["title"], "Missing API Key");
    let wrong = curl(addr, "/v1/account", &["-H", "x-api-key: wrong"]);
    assert_eq!(wrong.status, 403);
    let header = format!("x-api-key: {key}");
    assert_eq!(curl(addr, "/v1/account", &["-H", &header]).status, 200);
    let image = format!("image_file={}", photo());
    let segment = |header: &str| {
        curl(
            addr,
            "/v1/segment",
            &["-H", header, "-F", &image, "-F", "size=preview"],
        )
    };
    assert_eq!(segment(&header).status, 200);
    // Revoked while the server runs: the next request is refused, no restart.
    assert!(
        replica
            .block_on(replica.store().revoke("shop", 1_700_000_100))
            .unwrap()
    );
    assert_eq!(segment(&header).status, 403);
    assert_eq!(curl(addr, "/v1/account", &["-H", &header]).status, 403);
}

#[test]
fn account_endpoints_report_subscription_and_payg_from_the_store() {
    let replica = start_with_store(Config::default(), Some(sqlite_url("account")));
    let key = create_key(
        &replica,
        NewKey {
            monthly_millicredits: Some(3_000),
            plan: store::Plan::Plus,
            ..NewKey::named("shop")
        },
    );
    assert!(
        replica
            .block_on(replica.store().add_credits("shop", 2_500))
            .unwrap()
    );
    let header = format!("x-api-key: {key}");
    let image = format!("image_file={}", photo());
    // Plus plan: a preview segment costs 0.2 × 0.25 credit; an edit costs 1.
    let segment = curl(
        replica.addr,
        "/v1/segment",
        &["-H", &header, "-F", &image, "-F", "size=preview"],
    );
    assert_eq!(segment.status, 200);
    assert_eq!(segment.header("x-credits-charged"), Some("0.05"));
    let edit_image = format!("imageFile={}", photo());
    let edit = curl(
        replica.addr,
        "/v2/edit",
        &["-H", &header, "-F", &edit_image, "-F", "outputSize=100x100"],
    );
    assert_eq!(edit.status, 200, "{}", String::from_utf8_lossy(&edit.body));
    assert_eq!(edit.header("x-credits-charged"), Some("1"));
    // 3 - 1.05 of the subscription left, and all 2.5 pay-as-you-go.
    let removebg = curl(replica.addr, "/v1.0/account", &["-H", &header]).json();
    let credits = &removebg["data"]["attributes"]["credits"];
    assert_eq!(credits["subscription"], 1.95, "{removebg}");
    assert_eq!(credits["payg"], 2.5);
    assert_eq!(credits["total"], 4.45);
    assert_eq!(credits["enterprise"], 0.0);
    assert_eq!(removebg["data"]["attributes"]["api"]["sizes"], "all");
    let v1 = curl(replica.addr, "/v1/account", &["-H", &header]).json();
    assert_eq!(v1["credits"]["available"], 4.45);
    assert_eq!(v1["credits"]["subscription"], 3.0);
    let v2 = curl(replica.addr, "/v2/account", &["-H", &header]).json();
    assert_eq!(v2["plan"], "plus");
    // A request that failed is in the history, uncharged.
    let bad = curl(
        replica.addr,
        "/v1/segment",
        &["-H", &header, "-F", &image, "-F", "size=huge"],
    );
    assert_eq!(bad.status, 400);
    let shop = replica
        .block_on(replica.store().key_by_name("shop"))
        .unwrap()
        .unwrap();
    let days = replica
        .block_on(replica.store().usage_by_day(shop.id, 0))
        .unwrap();
    let requests: i64 = days.iter().map(|d| d.requests).sum();
    let errors: i64 = days.iter().map(|d| d.errors).sum();
    let spent: i64 = days.iter().map(|d| d.millicredits).sum();
    assert_eq!((requests, errors, spent), (3, 1, 1_050), "{days:?}");
}

#[test]
fn sandbox_keys_pay_nothing_and_get_watermarks() {
    // 22:14:40 UTC: 6,320 s before the day's free calls come back.
    let now: u64 = 1_700_000_080;
    let config = Config {
        sandbox_daily_calls: 2,
        clock: std::sync::Arc::new(move || now),
        ..Config::default()
    };
    let replica = start_with_store(config, Some(sqlite_url("sandbox")));
    let key = create_key(
        &replica,
        NewKey {
            sandbox: true,
            ..NewKey::named("trial")
        },
    );
    let header = format!("x-api-key: {key}");
    let image = format!("image_file={}", photo());
    let reply = curl(replica.addr, "/v1/segment", &["-H", &header, "-F", &image]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-credits-charged"), Some("0"));
    let account = curl(replica.addr, "/v1.0/account", &["-H", &header]).json();
    let attributes = &account["data"]["attributes"];
    assert_eq!(attributes["api"]["free_calls"], 999.0, "{account}");
    assert_eq!(attributes["credits"]["total"], 0.0);

    // The day's second call is the last (this server allows 2 a day; PhotoRoom 100): the
    // third waits for 00:00 UTC, with nothing taken from the month's free calls.
    let second = curl(replica.addr, "/v1/segment", &["-H", &header, "-F", &image]);
    assert_eq!(second.status, 200);
    let third = curl(replica.addr, "/v1/segment", &["-H", &header, "-F", &image]);
    assert_eq!(
        third.status,
        429,
        "{}",
        String::from_utf8_lossy(&third.body)
    );
    assert_eq!(third.header("retry-after"), Some("6320"));
    assert!(
        String::from_utf8_lossy(&third.body).contains("Sandbox quota exhausted for today"),
        "{}",
        String::from_utf8_lossy(&third.body)
    );
    let account = curl(replica.addr, "/v1.0/account", &["-H", &header]).json();
    assert_eq!(
        account["data"]["attributes"]["api"]["free_calls"], 998.0,
        "{account}"
    );
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let mut config = Config::default();
    config.batching.capacity = 1;
    config.batching.max_batch = 1;
    let addr = start(config);
    let image = format!("image_file={}", photo());
    let replies: Vec<Reply> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                scope.spawn(|| curl(addr, "/v1/segment", &["-F", &image, "-F", "size=preview"]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let busy: Vec<&Reply> = replies.iter().filter(|r| r.status == 503).collect();
    assert!(
        !busy.is_empty(),
        "statuses {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(busy.iter().all(|r| r.header("retry-after").is_some()));
    assert!(replies.iter().any(|r| r.status == 200));
}

#[test]
fn rate_limit_counts_megapixel_images_and_answers_429() {
    let dir = std::env::temp_dir().join(format!("cutout-http-rate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // 40 s into a minute, fixed: the minute never turns over during the test.
    let now: u64 = 1_700_000_080;
    let config = Config {
        rate_limit: 3,
        clock: std::sync::Arc::new(move || now),
        ..Config::default()
    };
    let replica = start_with_store(config, Some(sqlite_url("rate")));
    let key = create_key(&replica, NewKey::named("shop"));
    let addr = replica.addr;
    let header = format!("x-api-key: {key}");
    // 1600×1200 costs 2 megapixel images; chelsea.jpg (451×300) costs 1.
    let large = image::RgbImage::from_fn(1600, 1200, |x, y| {
        image::Rgb([(x / 7) as u8, (y / 5) as u8, ((x + y) / 11) as u8])
    });
    let large_path = dir.join("large.jpg");
    large.save(&large_path).unwrap();
    let large_file = format!("image_file=@{}", large_path.display());
    let small_file = format!("image_file={}", photo());
    let removebg = |file: &str| {
        curl(
            addr,
            "/v1.0/removebg",
            &["-H", &header, "-F", file, "-F", "size=preview"],
        )
    };

    let first = removebg(&large_file);
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("1"));
    // The end of the clock minute, in Unix seconds.
    assert_eq!(first.header("x-ratelimit-reset"), Some("1700000100"));
    // Replies that take nothing from the minute report it too: an error, an account call.
    let invalid = curl(
        addr,
        "/v1.0/removebg",
        &["-H", &header, "-F", "size=preview"],
    );
    assert_eq!(invalid.status, 400, "no image");
    let account = curl(addr, "/v1.0/account", &["-H", &header]);
    assert_eq!(account.status, 200);
    for reply in [&invalid, &account] {
        assert_eq!(reply.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(reply.header("x-ratelimit-remaining"), Some("1"));
        assert_eq!(reply.header("x-ratelimit-reset"), Some("1700000100"));
    }

    // The second large image does not fit in what is left of the minute.
    let refused = removebg(&large_file);
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["errors"][0]["code"], "rate_limit_exceeded");
    assert_eq!(refused.json()["errors"][0]["title"], "Rate limit exceeded");
    assert_eq!(refused.header("retry-after"), Some("20"));
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("1"));
    let last = removebg(&small_file);
    assert_eq!(last.status, 200);
    assert_eq!(last.header("x-ratelimit-remaining"), Some("0"));
    let photoroom = curl(
        addr,
        "/v1/segment",
        &["-H", &header, "-F", &small_file, "-F", "size=preview"],
    );
    assert_eq!(photoroom.status, 429);
    assert_eq!(photoroom.json()["type"], "rate_limit_exceeded");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn simple_api_options_and_documented_errors() {
    let image = format!("image={}", photo());
    let reply = curl(
        server(),
        "/v1/remove-background",
        &[
            "-F",
            &image,
            "-F",
            "format=jpg",
            "-F",
            "channels=rgb",
            "-F",
            "bg_color=rgb(255, 255, 255)",
            "-F",
            "size=preview",
            "-F",
            "crop=true",
        ],
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.header("content-type"), Some("image/jpeg"));
    let result = image::load_from_memory(&reply.body).unwrap();
    let (width, height) = (result.width(), result.height());
    assert_eq!(
        reply.header("x-image-width"),
        Some(width.to_string().as_str())
    );
    assert_eq!(
        reply.header("x-image-height"),
        Some(height.to_string().as_str())
    );
    assert!(
        width.max(height) <= 256,
        "preview is at most 256 px: {width}x{height}"
    );
    assert!(reply.header("x-request-id").is_some());
    assert!(reply.header("x-processing-time-ms").is_some());

    let webp = curl(
        server(),
        "/v1/remove-background",
        &["-F", &image, "-F", "format=webp", "-F", "size=small"],
    );
    assert_eq!(webp.status, 200);
    assert_eq!(webp.header("content-type"), Some("image/webp"));

    let error = |reply: &Reply| reply.json()["error"]["code"].as_str().unwrap().to_string();
    let missing = curl(server(), "/v1/remove-background", &["-F", "format=png"]);
    assert_eq!(
        (missing.status, error(&missing).as_str()),
        (400, "missing_image")
    );
    let invalid = curl(
        server(),
        "/v1/remove-background",
        &["-F", &image, "-F", "size=huge"],
    );
    assert_eq!(
        (invalid.status, error(&invalid).as_str()),
        (400, "validation_error")
    );
    let corrupt = format!("image=@{}", fixture("decode/truncated.jpg").display());
    let corrupt = curl(server(), "/v1/remove-background", &["-F", &corrupt]);
    assert_eq!(
        (corrupt.status, error(&corrupt).as_str()),
        (400, "validation_error")
    );
    // Over the documented 20 MB: 400 image_too_large, refused from the header.
    let too_large = curl(
        server(),
        "/v1/remove-background",
        &[
            "-H",
            "Content-Length: 21000000",
            "-H",
            "Content-Type: multipart/form-data; boundary=x",
            "--data-binary",
            "x",
            "--max-time",
            "5",
        ],
    );
    assert_eq!(
        (too_large.status, error(&too_large).as_str()),
        (400, "image_too_large")
    );
}

#[test]
fn parallel_requests_never_overdraw_credits() {
    let config = Config {
        monthly_credits: 10.0,
        ..Config::default()
    };
    let replica = start_with_store(config, Some(sqlite_url("credits")));
    let key = create_key(&replica, NewKey::named("shop"));
    let addr = replica.addr;
    let header = format!("x-api-key: {key}");
    let image = format!("image_file={}", photo());
    let replies: Vec<Reply> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|_| scope.spawn(|| curl(addr, "/v1/segment", &["-H", &header, "-F", &image])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 402).count(),
        40,
        "{statuses:?}"
    );
    for reply in replies.iter().filter(|r| r.status == 200) {
        assert_eq!(reply.header("x-credits-charged"), Some("1"));
    }
    let account = curl(addr, "/v1/account", &["-H", &header]).json();
    assert_eq!(account["credits"]["available"], 0.0, "{account}");
    // A refused request held nothing: the key's whole allowance was spent on images, and the
    // history has one charged row per image.
    let shop = replica
        .block_on(replica.store().key_by_name("shop"))
        .unwrap()
        .unwrap();
    let days = replica
        .block_on(replica.store().usage_by_day(shop.id, 0))
        .unwrap();
    let images: i64 = days.iter().map(|d| d.images).sum();
    let spent: i64 = days.iter().map(|d| d.millicredits).sum();
    assert_eq!((images, spent), (10, 10_000));
}

mod common;

/// A database of its own on the test PostgreSQL.
fn fresh_postgres(test: &str) -> String {
    let prefix = format!("cutout_http_{test}");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(common::fresh_postgres(&prefix))
}

/// `count` requests at once, alternating between the replicas; their statuses.
fn hammer(replicas: &[&Replica], key: &str, count: usize) -> Vec<u16> {
    let header = format!("x-api-key: {key}");
    let image = format!("image_file={}", photo());
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .map(|i| {
                let addr = replicas[i % replicas.len()].addr;
                let (header, image) = (&header, &image);
                scope.spawn(move || {
                    curl(
                        addr,
                        "/v1.0/removebg",
                        &["-H", header, "-F", image, "-F", "size=full"],
                    )
                    .status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn two_replicas_on_one_postgres_share_credits_rate_limits_and_revocation() {
    let url = fresh_postgres("replicas");
    // A fixed time 40 s into a minute: the rate window cannot turn over mid-test.
    let now: u64 = 1_700_000_080;
    let config = || Config {
        clock: std::sync::Arc::new(move || now),
        ..Config::default()
    };
    let a = start_with_store(config(), Some(url.clone()));
    let b = start_with_store(config(), Some(url));
    let credits_key = create_key(
        &a,
        NewKey {
            monthly_millicredits: Some(10_000),
            rate_limit: Some(1000),
            ..NewKey::named("credits")
        },
    );
    let rate_key = create_key(
        &b,
        NewKey {
            rate_limit: Some(8),
            ..NewKey::named("rate")
        },
    );

    // One ledger: 10 credits buy exactly 10 images across both replicas.
    let statuses = hammer(&[&a, &b], &credits_key, 40);
    let count = |status| statuses.iter().filter(|&&s| s == status).count();
    assert_eq!((count(200), count(402)), (10, 30), "{statuses:?}");
    let key = a
        .block_on(a.store().key_by_name("credits"))
        .unwrap()
        .unwrap();
    let days = a.block_on(a.store().usage_by_day(key.id, 0)).unwrap();
    assert_eq!(days.iter().map(|d| d.millicredits).sum::<i64>(), 10_000);
    let balance = b
        .block_on(
            b.store()
                .balance(key.id, &store::month_of(now as i64), 10_000),
        )
        .unwrap();
    assert_eq!(balance.available(), 0);

    // One rate limit: 8 megapixel images in the minute across both replicas.
    let statuses = hammer(&[&a, &b], &rate_key, 24);
    let count = |status| statuses.iter().filter(|&&s| s == status).count();
    assert_eq!((count(200), count(429)), (8, 16), "{statuses:?}");

    // Revoked through one replica's store: refused by both at once.
    assert!(a.block_on(a.store().revoke("rate", now as i64)).unwrap());
    let header = format!("x-api-key: {rate_key}");
    for replica in [&a, &b] {
        assert_eq!(
            curl(replica.addr, "/v1.0/account", &["-H", &header]).status,
            403
        );
    }
}

/// Sends `bytes` on a new connection and reads until the server closes it (the event the
/// test waits on; the read timeout only turns a server that never closes into a failure).
fn send_raw(addr: SocketAddr, bytes: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(bytes).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut reply = Vec::new();
    match stream.read_to_end(&mut reply) {
        Ok(_) => {}
        // A reset after the reply (unread request bytes) is a close too.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the server did not close the connection: {e}"),
    }
    String::from_utf8_lossy(&reply).into_owned()
}

#[test]
fn slow_headers_and_header_floods_are_cut_off_and_others_still_served() {
    let config = Config {
        header_read_timeout: std::time::Duration::from_secs(1),
        ..Config::default()
    };
    let addr = start(config);
    // Slowloris: the headers never end; the server closes the connection.
    let started = std::time::Instant::now();
    let reply = send_raw(
        addr,
        b"GET /health HTTP/1.1\r\nHost: cutout\r\nX-Slow: 1\r\n",
    );
    assert!(!reply.contains("200 OK"), "{reply}");
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    // 10,000 headers: refused with 431.
    let mut flood = b"GET /health HTTP/1.1\r\nHost: cutout\r\n".to_vec();
    for n in 0..10_000 {
        flood.extend_from_slice(format!("X-Flood-{n}: {n}\r\n").as_bytes());
    }
    flood.extend_from_slice(b"\r\n");
    let reply = send_raw(addr, &flood);
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    // Others are served throughout.
    assert_eq!(curl(addr, "/health", &[]).status, 200);
}

/// A TCP proxy to `target` that the test can take down (closing every connection through it
/// and refusing new ones) and bring back on the same port: a database that goes away.
struct Proxy {
    addr: SocketAddr,
    down: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    fn start(target: SocketAddr) -> Proxy {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = port.local_addr().unwrap();
        drop(port);
        let (down, mut is_down) = tokio::sync::watch::channel(false);
        let (ready, bound) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async move {
                loop {
                    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
                    ready.send(()).ok();
                    let mut links = tokio::task::JoinSet::new();
                    loop {
                        tokio::select! {
                            accepted = listener.accept() => {
                                let Ok((mut client, _)) = accepted else { continue };
                                links.spawn(async move {
                                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                                    }
                                });
                            }
                            _ = is_down.wait_for(|down| *down) => break,
                        }
                    }
                    drop(listener);
                    links.abort_all();
                    if is_down.wait_for(|down| !*down).await.is_err() {
                        return;
                    }
                }
            });
        });
        bound.recv().unwrap();
        Proxy { addr, down }
    }

    fn set_down(&self, down: bool) {
        self.down.send(down).unwrap();
    }
}

#[test]
fn a_database_that_goes_away_gets_503_and_nothing_unmetered() {
    let url = fresh_postgres("outage");
    let (prefix, rest) = url.split_once('@').unwrap();
    let (host, database) = rest.split_once('/').unwrap();
    let target: SocketAddr = host.parse().unwrap();
    let proxy = Proxy::start(target);
    let replica = start_with_store(
        Config::default(),
        Some(format!("{prefix}@{}/{database}", proxy.addr)),
    );
    let key = create_key(&replica, NewKey::named("shop"));
    let header = format!("x-api-key: {key}");
    let image = format!("image_file={}", photo());
    let segment = || {
        curl(
            replica.addr,
            "/v1/segment",
            &["-H", &header, "-F", &image, "-F", "size=preview"],
        )
    };
    assert_eq!(segment().status, 200);

    proxy.set_down(true);
    let refused = segment();
    assert_eq!(
        refused.status,
        503,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(refused.json()["type"], "accounts_unavailable");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(curl(replica.addr, "/health", &[]).status, 200);
    let unready = curl(replica.addr, "/readyz", &[]);
    assert_eq!(unready.status, 503);
    assert_eq!(unready.json()["checks"]["database"]["ok"], false);
    assert_eq!(unready.json()["checks"]["device"]["ok"], true);

    proxy.set_down(false);
    assert_eq!(segment().status, 200);
    let ready = curl(replica.addr, "/readyz", &[]);
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["checks"]["database"]["ok"], true);
    // Two images, two quarter credits: the refused request charged nothing.
    let account = curl(replica.addr, "/v1/account", &["-H", &header]).json();
    assert_eq!(account["credits"]["available"], 9999.5, "{account}");
}

#[test]
fn trickled_bodies_and_connections_over_the_limit_are_refused() {
    let config = Config {
        header_read_timeout: std::time::Duration::from_secs(1),
        body_pace: cutout_server::body::Pace {
            idle: std::time::Duration::from_secs(1),
            min_rate: 1024,
            grace: std::time::Duration::from_secs(1),
        },
        max_connections: 3,
        ..Config::default()
    };
    let addr = start(config);
    // A body that stops: 408 after the idle timeout.
    let stalled = send_raw(
        addr,
        b"POST /v1/segment HTTP/1.1\r\nHost: cutout\r\nContent-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\n\r\n--x\r\n",
    );
    assert!(stalled.starts_with("HTTP/1.1 408"), "{stalled}");
    assert!(stalled.contains("request_timeout"), "{stalled}");

    // A body trickled a byte every 100 ms: 408 once the grace second has passed.
    use std::io::{Read, Write};
    let mut trickle = std::net::TcpStream::connect(addr).unwrap();
    trickle
        .write_all(b"POST /v1/segment HTTP/1.1\r\nHost: cutout\r\nContent-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\n\r\n")
        .unwrap();
    trickle
        .set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    let mut reply = Vec::new();
    let mut buffer = [0u8; 4096];
    for _ in 0..300 {
        match trickle.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buffer[..n]),
            Err(_) => {
                // No answer yet: one more byte (until the server closes the connection).
                if trickle.write_all(b"-").is_err() {
                    break;
                }
            }
        }
    }
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("slower than 1024 bytes/s"), "{reply}");

    // Three idle connections fill the limit: a fourth is answered 503 and closed.
    let idle: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // Wait until the server holds all three (it answers a fourth with 503), then check it.
    let mut refused = String::new();
    for _ in 0..500 {
        refused = send_raw(addr, b"GET /health HTTP/1.1\r\nHost: cutout\r\n\r\n");
        if refused.starts_with("HTTP/1.1 503") {
            break;
        }
    }
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("retry-after: 1") || refused.contains("Retry-After: 1"));
    // Idle connections are closed by the header timeout, and service resumes.
    for mut connection in idle {
        connection
            .set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        let mut rest = Vec::new();
        let _ = connection.read_to_end(&mut rest);
    }
    let mut status = 0;
    for _ in 0..500 {
        status = curl(addr, "/health", &[]).status;
        if status == 200 {
            break;
        }
    }
    assert_eq!(status, 200);
}

/// Bytes the server's memory budget holds now (`/health`).
fn memory_in_flight(addr: SocketAddr) -> u64 {
    let health = curl(addr, "/health", &[]);
    assert_eq!(health.status, 200, "/health answers throughout");
    health.json()["memory"]["in_flight_bytes"].as_u64().unwrap()
}

/// Waits until the server's memory in flight satisfies `condition` (polling /health, the
/// event this waits on; the bound only turns a server that never gets there into a failure).
fn wait_for_memory(addr: SocketAddr, what: &str, condition: impl Fn(u64) -> bool) {
    for _ in 0..3000 {
        if condition(memory_in_flight(addr)) {
            return;
        }
    }
    panic!("memory in flight never {what}");
}

/// A request that does not fit in the memory for work in flight waits, then gets 503 with
/// Retry-After; /health answers meanwhile; once the memory is given back the same request
/// is served.
#[test]
fn requests_past_the_memory_budget_wait_then_get_503() {
    let config = Config {
        max_inflight_memory: 1 << 20,
        admission_wait: std::time::Duration::from_millis(300),
        ..Config::default()
    };
    let addr = start(config);
    // A body declared as 700 KiB and not sent: its claim is held while the server waits
    // for the rest.
    use std::io::Write;
    let mut holder = std::net::TcpStream::connect(addr).unwrap();
    holder
        .write_all(b"POST /v1/segment HTTP/1.1\r\nHost: cutout\r\nContent-Type: multipart/form-data; boundary=x\r\nContent-Length: 716800\r\n\r\n--x\r\n")
        .unwrap();
    wait_for_memory(addr, "held the body's claim", |bytes| bytes >= 700 << 10);

    // A photo's body fits beside it, but its pixels and the model's forward (all of the
    // 1 MiB budget, the most one request is charged) do not.
    let refused = curl(
        addr,
        "/v1/segment",
        &["-F", &format!("image_file={}", photo())],
    );
    assert_eq!(
        refused.status,
        503,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert!(
        String::from_utf8_lossy(&refused.body).contains("memory for work in flight is full"),
        "{}",
        String::from_utf8_lossy(&refused.body)
    );

    // The held body goes away (the client disconnects): its claim is given back.
    drop(holder);
    wait_for_memory(addr, "fell back to zero", |bytes| bytes == 0);
    let served = curl(
        addr,
        "/v1/segment",
        &["-F", &format!("image_file={}", photo())],
    );
    assert_eq!(served.status, 200);
    assert_eq!(memory_in_flight(addr), 0, "every claim is given back");
}

/// A `side`×`side` red PNG written into `dir`, as curl's `-F image_file=@PATH` argument: the
/// fault tests pick which job to break by its width.
fn red_square_upload(dir: &std::path::Path, side: u32) -> String {
    let path = dir.join(format!("{side}.png"));
    image::RgbaImage::from_pixel(side, side, image::Rgba([200, 40, 40, 255]))
        .save(&path)
        .unwrap();
    format!("image_file=@{}", path.display())
}

/// A lost device — destroyed for real, through the worker hook, while a 13-pixel image is
/// about to be segmented — fails that request with 503 and `Retry-After`, and the worker
/// opens a new device and model: the next requests are served. (On its own device: the
/// other tests share theirs.)
#[cfg(feature = "fault-injection")]
#[test]
fn a_lost_device_is_reported_as_503_and_reopened() {
    use cutout_server::{Reopen, WorkerHook, WorkerStage};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hook: WorkerHook = Arc::new(|stage, job, editor| {
        if stage == WorkerStage::Segment && job.image.width() == 13 {
            editor.ops().gpu().device.destroy();
        }
    });
    let reopened = Arc::new(AtomicUsize::new(0));
    let count = reopened.clone();
    let reopen: Reopen = Arc::new(move || {
        count.fetch_add(1, Ordering::SeqCst);
        Editor::load(&Gpu::new(DevicePreference::Cpu)?, "u2netp", false)
    });
    let own_device = Gpu::new(DevicePreference::Cpu).unwrap();
    let editor = Editor::load(&own_device, "u2netp", false).unwrap();
    let config = Config {
        worker_hook: Some(hook),
        reopen: Some(reopen),
        ..Config::default()
    };
    let addr = start_with_editor(editor, config, None).addr;
    let dir = std::env::temp_dir().join(format!("cutout-http-lost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let square = |side: u32| red_square_upload(&dir, side);
    let served = curl(addr, "/v1/segment", &["-F", &square(15)]);
    assert_eq!(served.status, 200, "before the loss");
    let lost = curl(addr, "/v1/segment", &["-F", &square(13)]);
    let body = String::from_utf8_lossy(&lost.body).to_string();
    assert_eq!(lost.status, 503, "{body}");
    assert_eq!(lost.header("retry-after"), Some("5"), "{body}");
    assert!(body.contains("lost"), "{body}");
    assert_eq!(
        reopened.load(Ordering::SeqCst),
        1,
        "reopened once, before the reply"
    );
    for side in [15, 16] {
        let served = curl(addr, "/v1/segment", &["-F", &square(side)]);
        assert_eq!(
            served.status,
            200,
            "after the loss: {}",
            String::from_utf8_lossy(&served.body)
        );
    }
    let health = curl(addr, "/health", &[]);
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["queued"], 0, "no job left counted");
    assert_eq!(reopened.load(Ordering::SeqCst), 1);
    std::fs::remove_dir_all(&dir).ok();
}

/// A panic while rendering (injected through `Config::worker_hook`, as a bug would cause
/// one) fails that request with 500 and the server carries on serving, in either worker
/// thread.
#[cfg(feature = "fault-injection")]
#[test]
fn a_panic_in_the_renderer_fails_one_request_and_the_server_carries_on() {
    use cutout_server::{WorkerHook, WorkerStage};
    let hook: WorkerHook = std::sync::Arc::new(|stage, job, _| match (stage, job.image.width()) {
        (WorkerStage::Segment, 13) => panic!("injected fault before the forward"),
        (WorkerStage::Finish, 14) => panic!("injected fault before the effects"),
        _ => {}
    });
    let addr = start(Config {
        worker_hook: Some(hook),
        ..Config::default()
    });
    let dir = std::env::temp_dir().join(format!("cutout-http-panic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let square = |side: u32| red_square_upload(&dir, side);
    for side in [13, 14] {
        let failed = curl(addr, "/v1/segment", &["-F", &square(side)]);
        assert_eq!(
            failed.status,
            500,
            "{side}: {}",
            String::from_utf8_lossy(&failed.body)
        );
        assert!(
            String::from_utf8_lossy(&failed.body).contains("injected fault"),
            "{}",
            String::from_utf8_lossy(&failed.body)
        );
        let served = curl(
            addr,
            "/v1/segment",
            &["-F", &format!("image_file={}", photo())],
        );
        assert_eq!(served.status, 200, "served after the fault on {side}");
        let small = curl(addr, "/v1/segment", &["-F", &square(15)]);
        assert_eq!(small.status, 200);
    }
    let health = curl(addr, "/health", &[]);
    assert_eq!(health.json()["queued"], 0, "no job left counted");
    std::fs::remove_dir_all(&dir).ok();
}

/// `/metrics` parsed back with an independent parser of the text format.
fn scrape(addr: SocketAddr, args: &[&str]) -> (Reply, prometheus_parse::Scrape) {
    let reply = curl(addr, "/metrics", args);
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let text = String::from_utf8(reply.body.clone()).unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    (reply, scrape)
}

/// The value of the sample `metric` whose labels include `labels` (0 when there is none:
/// a labelled counter appears at its first increment).
fn sample(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::Value;
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map_or(0.0, |s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => panic!("{metric} is not a single value"),
        })
}

/// A multipart body with one file field, built here so that its exact length is known.
fn multipart_body(field: &str, file: &[u8]) -> (String, Vec<u8>) {
    let boundary = "cutout-test-boundary-7d1f";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"a.jpg\"\r\n\
         Content-Type: image/jpeg\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (
        format!("content-type: multipart/form-data; boundary={boundary}"),
        body,
    )
}

/// Known requests move `/metrics` by exactly what they were: counts by route and status,
/// body bytes in and out, megapixels, one sample per stage histogram, one batch of one.
#[test]
fn metrics_move_by_exactly_the_requests_sent() {
    let addr = start(Config::default());
    let dir = std::env::temp_dir().join(format!("cutout-http-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let photo = std::fs::read(fixture("images/chelsea.jpg")).unwrap();
    let (width, height) = image::load_from_memory(&photo)
        .unwrap()
        .to_rgba8()
        .dimensions();
    let (content_type, good) = multipart_body("image_file", &photo);
    let (_, bad) = multipart_body("image_file", b"not an image");
    std::fs::write(dir.join("good"), &good).unwrap();
    std::fs::write(dir.join("bad"), &bad).unwrap();
    let post = |file: &str| {
        let data = format!("@{}", dir.join(file).display());
        curl(
            addr,
            "/v1/segment",
            &["-H", &content_type, "--data-binary", &data],
        )
    };

    let (before_reply, before) = scrape(addr, &[]);
    let served = post("good");
    assert_eq!(served.status, 200);
    let refused = post("bad");
    assert_eq!(refused.status, 400);
    let missing = curl(addr, "/no/such/page", &[]);
    assert_eq!(missing.status, 404);
    let (_, after) = scrape(addr, &[]);

    let delta = |metric: &str, labels: &[(&str, &str)]| {
        sample(&after, metric, labels) - sample(&before, metric, labels)
    };
    let requests = |route, status| {
        delta(
            "cutout_requests_total",
            &[("route", route), ("status", status)],
        )
    };
    assert_eq!(requests("/v1/segment", "200"), 1.0);
    assert_eq!(requests("/v1/segment", "400"), 1.0);
    assert_eq!(requests("other", "404"), 1.0);
    assert_eq!(requests("/metrics", "200"), 1.0, "the first scrape");
    assert_eq!(
        delta("cutout_received_bytes_total", &[]),
        (good.len() + bad.len()) as f64,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    let sent =
        before_reply.body.len() + served.body.len() + refused.body.len() + missing.body.len();
    assert_eq!(delta("cutout_sent_bytes_total", &[]), sent as f64);
    let megapixels = delta(
        "cutout_processed_megapixels_total",
        &[("route", "/v1/segment")],
    );
    assert!(
        (megapixels - width as f64 * height as f64 / 1e6).abs() < 1e-9,
        "{megapixels}"
    );
    for stage in [
        "admission",
        "read_body",
        "decode",
        "queue_wait",
        "preprocess",
        "forward",
        "effects",
        "readback",
        "encode",
        "total",
    ] {
        let count = delta("cutout_stage_duration_seconds_count", &[("stage", stage)]);
        assert_eq!(count, 1.0, "{stage}");
    }
    let forward = delta("cutout_stage_duration_seconds_sum", &[("stage", "forward")]);
    let total = delta("cutout_stage_duration_seconds_sum", &[("stage", "total")]);
    assert!(forward > 0.0 && total >= forward, "{forward} {total}");
    assert_eq!(
        delta(
            "cutout_request_duration_seconds_count",
            &[("route", "/v1/segment")]
        ),
        2.0
    );
    assert_eq!(delta("cutout_images_total", &[("key", "-")]), 1.0);
    let charged: f64 = served.header("x-credits-charged").unwrap().parse().unwrap();
    assert_eq!(delta("cutout_credits_total", &[("key", "-")]), charged);
    assert_eq!(delta("cutout_batch_size_count", &[]), 1.0);
    assert_eq!(delta("cutout_batch_size_sum", &[]), 1.0);
    assert_eq!(sample(&after, "cutout_queue_depth", &[]), 0.0);
    assert_eq!(sample(&after, "cutout_in_flight_megapixels", &[]), 0.0);
    assert_eq!(sample(&after, "cutout_memory_in_flight_bytes", &[]), 0.0);
    assert_eq!(
        sample(&after, "cutout_build_info", &[("model", "u2netp")]),
        1.0
    );
    assert!(sample(&after, "process_resident_memory_bytes", &[]) > 0.0);
    std::fs::remove_dir_all(&dir).ok();
}

/// A server with accounts in a fresh SQLite store and two keys: "shop" and the admin "ops".
fn shop_and_admin(test: &str) -> (Replica, String, String) {
    let replica = start_with_store(Config::default(), Some(sqlite_url(test)));
    let shop = create_key(&replica, NewKey::named("shop"));
    let admin = create_key(
        &replica,
        NewKey {
            admin: true,
            ..NewKey::named("ops")
        },
    );
    (replica, shop, admin)
}

/// With accounts, `/metrics` is for admin keys: 401 without a key, 403 with another; images
/// are counted by key name, and no key appears in it.
#[test]
fn metrics_need_an_admin_key_and_count_by_key_name() {
    let (replica, shop, admin) = shop_and_admin("metrics");
    let missing = curl(replica.addr, "/metrics", &[]);
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json()["error"]["code"], "authentication_error");
    let shop_header = format!("x-api-key: {shop}");
    let other = curl(replica.addr, "/metrics", &["-H", &shop_header]);
    assert_eq!(other.status, 403);
    assert_eq!(other.json()["error"]["code"], "forbidden");

    let image = format!("image_file={}", photo());
    let served = curl(
        replica.addr,
        "/v1/segment",
        &["-H", &shop_header, "-F", &image, "-F", "size=preview"],
    );
    assert_eq!(served.status, 200);
    let bearer = format!("authorization: Bearer {admin}");
    let (reply, scrape) = scrape(replica.addr, &["-H", &bearer]);
    assert_eq!(
        sample(&scrape, "cutout_images_total", &[("key", "shop")]),
        1.0
    );
    assert_eq!(
        sample(&scrape, "cutout_credits_total", &[("key", "shop")]),
        0.25
    );
    let text = String::from_utf8_lossy(&reply.body);
    assert!(!text.contains(&shop) && !text.contains(&admin));
}

/// `/readyz` answers 200 while the device answers a probe, and 503 naming the device once
/// it is lost (no reopen here); `/healthz` only says the process is up.
#[test]
fn readiness_follows_the_device() {
    let own_device = Gpu::new(DevicePreference::Cpu).unwrap();
    let editor = Editor::load(&own_device, "u2netp", false).unwrap();
    let config = Config {
        readiness_interval: std::time::Duration::ZERO,
        ..Config::default()
    };
    let addr = start_with_editor(editor, config, None).addr;
    let ready = curl(addr, "/readyz", &[]);
    assert_eq!(
        ready.status,
        200,
        "{}",
        String::from_utf8_lossy(&ready.body)
    );
    let body = ready.json();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["device"]["ok"], true);
    assert_eq!(body["checks"]["model"]["name"], "u2netp");
    assert!(body["checks"].get("database").is_none());

    own_device.device.destroy();
    let lost = curl(addr, "/readyz", &[]);
    assert_eq!(lost.status, 503, "{}", String::from_utf8_lossy(&lost.body));
    let body = lost.json();
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["checks"]["device"]["ok"], false);
    assert!(lost.header("retry-after").is_some());
    assert_eq!(curl(addr, "/healthz", &[]).status, 200);
}

/// Log lines captured from the process-wide `tracing` subscriber (set once, by the test
/// that reads them; other tests' lines land here too and are told apart by request id).
fn captured_logs() -> &'static std::sync::Mutex<Vec<u8>> {
    static LOGS: OnceLock<std::sync::Mutex<Vec<u8>>> = OnceLock::new();
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        struct Capture;
        impl std::io::Write for Capture {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                captured_logs().lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::INFO)
            .with_writer(|| Capture)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
    LOGS.get_or_init(Default::default)
}

/// One JSON line per request with its id, route, status, key name, sizes and stage
/// timings; never the key itself.
#[test]
fn each_request_logs_one_json_line_without_the_key() {
    captured_logs();
    let replica = start_with_store(Config::default(), Some(sqlite_url("logs")));
    let key = create_key(&replica, NewKey::named("shop"));
    let header = format!("x-api-key: {key}");
    let image = format!("image_file={}", photo());
    let served = curl(
        replica.addr,
        "/v1/segment",
        &["-H", &header, "-F", &image, "-F", "size=preview"],
    );
    assert_eq!(served.status, 200);
    let id = served.header("x-request-id").unwrap().to_string();
    let refused = curl(replica.addr, "/v1/segment", &["-H", "x-api-key: wrong"]);
    assert_eq!(refused.status, 403);
    let refused_id = refused.header("x-request-id").unwrap().to_string();

    let logs = String::from_utf8(captured_logs().lock().unwrap().clone()).unwrap();
    let line = |id: &str| -> serde_json::Value {
        let lines: Vec<serde_json::Value> = logs
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["request_id"] == id)
            .collect();
        assert_eq!(lines.len(), 1, "one line for {id} in:\n{logs}");
        lines[0].clone()
    };
    let served_line = line(&id);
    assert_eq!(served_line["target"], "cutout::request");
    assert_eq!(served_line["route"], "/v1/segment");
    assert_eq!(served_line["status"], 200);
    assert_eq!(served_line["key"], "shop");
    assert_eq!(served_line["sent_bytes"], served.body.len() as u64);
    assert!(served_line["received_bytes"].as_u64().unwrap() > 0);
    assert!(served_line["forward_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(served_line["credits"], 0.25);
    let refused_line = line(&refused_id);
    assert_eq!(refused_line["status"], 403);
    assert_eq!(refused_line["key"], "-");
    assert!(!logs.contains(&key), "a key in the logs");
}

/// `/dashboard/data` is for admin keys and reports each key's credits and daily usage from
/// the store, and the server's statuses, latency and batches from its metrics.
#[test]
fn the_dashboard_reports_keys_usage_and_the_servers_counts_to_admins() {
    let (replica, shop, admin) = shop_and_admin("dashboard");
    let page = curl(replica.addr, "/dashboard", &[]);
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(curl(replica.addr, "/dashboard/data", &[]).status, 401);
    let shop_header = format!("x-api-key: {shop}");
    assert_eq!(
        curl(replica.addr, "/dashboard/data", &["-H", &shop_header]).status,
        403
    );
    let image = format!("image_file={}", photo());
    let served = curl(
        replica.addr,
        "/v1/segment",
        &["-H", &shop_header, "-F", &image, "-F", "size=preview"],
    );
    assert_eq!(served.status, 200);
    let refused = curl(
        replica.addr,
        "/v1/segment",
        &["-H", &shop_header, "-F", &image, "-F", "size=gigantic"],
    );
    assert_eq!(refused.status, 400);

    let admin_header = format!("x-api-key: {admin}");
    let data = curl(replica.addr, "/dashboard/data", &["-H", &admin_header]);
    assert_eq!(data.status, 200, "{}", String::from_utf8_lossy(&data.body));
    let data = data.json();
    let server = &data["server"];
    assert_eq!(
        server["by_status"],
        serde_json::json!({"200": 2, "400": 1, "401": 1, "403": 1}),
        "{data}"
    );
    assert_eq!(server["batches"], 1);
    assert_eq!(server["mean_batch_size"], 1.0);
    assert_eq!(server["queue_depth"], 0);
    let (p50, p95) = (
        server["p50_ms"].as_f64().unwrap(),
        server["p95_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p95 >= p50, "{server}");
    let keys = data["keys"].as_array().unwrap();
    let shop_row = keys.iter().find(|k| k["name"] == "shop").unwrap();
    assert_eq!(shop_row["used"], 0.25);
    assert_eq!(shop_row["available"], 9999.75);
    let today = data["today"].as_i64().unwrap();
    assert_eq!(
        shop_row["days"],
        serde_json::json!([{"day": today, "requests": 2, "images": 1, "errors": 1, "credits": 0.25}])
    );
    let ops_row = keys.iter().find(|k| k["name"] == "ops").unwrap();
    assert_eq!(ops_row["admin"], true);
    assert_eq!(ops_row["days"], serde_json::json!([]));
}
