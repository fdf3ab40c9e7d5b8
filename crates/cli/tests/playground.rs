//! The playground in a real browser: Debian's Chromium driven through chromedriver
//! (`cargo xtask test` installs both) against a `cutout serve` started here, as a user
//! would use it: pick a photo and options, run, read the result and the curl command.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// A child process killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn repository(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

/// `CUTOUT_<VARIABLE>` or the Debian package's path; a clear failure when neither exists.
fn program(variable: &str, default: &str) -> String {
    let path = std::env::var(variable).unwrap_or_else(|_| default.to_string());
    assert!(
        Path::new(&path).exists(),
        "{path} is missing: run `cargo xtask test`, which installs Debian's chromium and \
         chromium-driver, or set {variable}"
    );
    path
}

/// Waits for the first line of `reader` that contains `marker` (the process says it is
/// ready: no polling), then keeps draining the pipe so the process never blocks on it.
fn wait_for_line(reader: impl std::io::Read + Send + 'static, marker: &str) -> String {
    let mut lines = BufReader::new(reader).lines();
    let line = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|line| line.contains(marker))
        .unwrap_or_else(|| panic!("the process ended before printing {marker:?}"));
    std::thread::spawn(move || lines.for_each(drop));
    line
}

/// `cutout serve --no-auth` on a free loopback port; its base URL.
fn start_server() -> (Running, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cutout"))
        .args(["serve", "--no-auth", "--offline", "--addr", "127.0.0.1:0"])
        .env("CUTOUT_DEVICE", "cpu")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let line = wait_for_line(stderr, "listening on http://");
    let url = line[line.find("http://").unwrap()..].trim().to_string();
    (Running(child), url)
}

/// chromedriver on a free loopback port; its URL.
fn start_chromedriver() -> (Running, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(program("CUTOUT_CHROMEDRIVER", "/usr/bin/chromedriver"))
        .arg(format!("--port={port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    wait_for_line(stdout, "started successfully");
    (Running(child), format!("http://127.0.0.1:{port}"))
}

async fn open_browser(webdriver: &str, profile: &Path) -> Client {
    // Headless, and without the background connections a closed network refuses.
    let options = json!({
        "binary": program("CUTOUT_CHROMIUM", "/usr/bin/chromium"),
        "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
            format!("--user-data-dir={}", profile.display()),
        ],
    });
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".into(), options);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(webdriver)
        .await
        .expect("a Chromium session")
}

/// Opens the group `name` of the form (a `<details>`), as a user clicks its title.
async fn open_group(client: &Client, name: &str) {
    let summary = client
        .find(Locator::XPath(&format!("//summary[text()='{name}']")))
        .await
        .unwrap();
    let open = client
        .execute(
            "return arguments[0].parentElement.open",
            vec![serde_json::to_value(&summary).unwrap()],
        )
        .await
        .unwrap();
    if open != json!(true) {
        summary.click().await.unwrap();
    }
}

async fn parameter(client: &Client, name: &str) -> fantoccini::elements::Element {
    client
        .find(Locator::Css(&format!("[data-param='{name}']")))
        .await
        .unwrap()
}

/// Presses Run and waits for the result or the error to be shown.
async fn run(client: &Client) -> Result<(), String> {
    client
        .find(Locator::Id("run"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .wait()
        .at_most(Duration::from_secs(300))
        .for_element(Locator::Css("#compare:not([hidden]), #error:not([hidden])"))
        .await
        .unwrap();
    let error = client.find(Locator::Id("error")).await.unwrap();
    match error.is_displayed().await.unwrap() {
        true => Err(error.text().await.unwrap()),
        false => Ok(()),
    }
}

/// The result shown: its natural size, its top-left pixel and its bytes.
async fn shown_result(client: &Client) -> (u64, u64, Vec<u8>, Vec<u8>) {
    let shown = client
        .execute(
            "const img = document.getElementById('after');
             const canvas = document.createElement('canvas');
             canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
             const context = canvas.getContext('2d');
             context.drawImage(img, 0, 0);
             return [img.naturalWidth, img.naturalHeight,
                     Array.from(context.getImageData(0, 0, 1, 1).data)];",
            vec![],
        )
        .await
        .unwrap();
    let bytes = client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(document.getElementById('after').src)
               .then((r) => r.arrayBuffer())
               .then((buffer) => {
                 let text = '';
                 for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);
                 done(btoa(text));
               })
               .catch((error) => done(`error: ${error}`));",
            vec![],
        )
        .await
        .unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(bytes.as_str().unwrap())
        .unwrap();
    let pixel = shown[2]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    (
        shown[0].as_u64().unwrap(),
        shown[1].as_u64().unwrap(),
        pixel,
        bytes,
    )
}

/// Controls shown but not wholly inside the viewport's width, and whether the page scrolls
/// sideways.
async fn off_screen(client: &Client) -> Value {
    client
        .execute(
            "for (const details of document.querySelectorAll('details')) details.open = true;
             const width = document.documentElement.clientWidth;
             const controls = document.querySelectorAll('input, select, button, summary, a, pre');
             const outside = Array.from(controls)
               .filter((e) => e.offsetParent !== null)
               .filter((e) => { const r = e.getBoundingClientRect();
                                return r.left < 0 || r.right > width + 0.5; })
               .map((e) => e.dataset.param || e.id || e.tagName);
             const wide = Array.from(document.querySelectorAll('body *'))
               .filter((e) => e.getBoundingClientRect().right > width + 0.5)
               .map((e) => `${e.tagName}#${e.id}.${e.className}`);
             return {outside, wide, scrolls: document.documentElement.scrollWidth > width, width};",
            vec![],
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn the_playground_runs_an_edit_shows_it_and_its_curl_command_in_chromium() {
    let dir = std::env::temp_dir().join(format!("cutout-playground-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(dir.join("profile")).unwrap();
    let photo = dir.join("chelsea.jpg");
    std::fs::copy(repository("tests/fixtures/images/chelsea.jpg"), &photo).unwrap();
    let (_server, base) = start_server();
    let (_driver, webdriver) = start_chromedriver();
    let client = open_browser(&webdriver, &dir.join("profile")).await;

    client.goto(&base).await.unwrap();
    // The form is built from /openapi.json once it has loaded.
    client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("[data-param='background.color']"))
        .await
        .unwrap();
    let endpoint = client.find(Locator::Id("endpoint")).await.unwrap();
    endpoint.select_by_value("/v2/edit").await.unwrap();
    client
        .find(Locator::Id("image-file"))
        .await
        .unwrap()
        .send_keys(photo.to_str().unwrap())
        .await
        .unwrap();
    open_group(&client, "Background").await;
    parameter(&client, "background.color")
        .await
        .send_keys("FFFFFF")
        .await
        .unwrap();
    open_group(&client, "Shadow").await;
    parameter(&client, "shadow.mode")
        .await
        .select_by_value("ai.soft")
        .await
        .unwrap();
    open_group(&client, "Output size").await;
    parameter(&client, "outputSize")
        .await
        .send_keys("500x400")
        .await
        .unwrap();
    run(&client).await.expect("the edit succeeds");

    let (width, height, corner, shown) = shown_result(&client).await;
    assert_eq!((width, height), (500, 400));
    assert_eq!(corner, [255, 255, 255, 255], "a white corner");
    let credits = client
        .find(Locator::Css("[data-header='credits charged']"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(credits, "1");
    if std::env::var_os("CUTOUT_UPDATE_SCREENSHOT").is_some() {
        client
            .execute("window.scrollTo(0, 0)", vec![])
            .await
            .unwrap();
        let png = client.screenshot().await.unwrap();
        std::fs::write(repository("docs/playground.png"), png).unwrap();
    }

    // The curl command shown, run as a user pastes it, gives the same bytes.
    let curl = client
        .find(Locator::Id("curl"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(curl.contains("imageFile=@chelsea.jpg"), "{curl}");
    let status = Command::new("sh")
        .args(["-c", &format!("{curl} --fail --silent --show-error")])
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(status.success(), "{curl}");
    let from_curl = std::fs::read(dir.join("result.png")).unwrap();
    assert!(
        from_curl == shown,
        "curl's result differs from the one shown"
    );

    // A bad option shows the API's own refusal, naming the field.
    open_group(&client, "Padding").await;
    let padding = parameter(&client, "padding").await;
    padding.send_keys("0.9").await.unwrap();
    let error = run(&client).await.expect_err("padding 0.9 is refused");
    assert!(
        error.starts_with("400") && error.contains("padding"),
        "{error}"
    );
    padding.clear().await.unwrap();

    // A file over the server's upload limit (30 MB) is refused in the server's words, at once.
    let huge = dir.join("huge.jpg");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(31 << 20)
        .unwrap();
    let chooser = client.find(Locator::Id("image-file")).await.unwrap();
    chooser.clear().await.unwrap();
    chooser.send_keys(huge.to_str().unwrap()).await.unwrap();
    let error = run(&client).await.expect_err("a 31 MB upload is refused");
    assert!(
        error.starts_with("413: the request body is larger than 31457280 bytes"),
        "{error}"
    );
    chooser.clear().await.unwrap();
    chooser.send_keys(photo.to_str().unwrap()).await.unwrap();

    // A phone-sized viewport: every control within the width, and the same run works.
    client.set_window_size(390, 844).await.unwrap();
    let layout = off_screen(&client).await;
    assert_eq!(layout["outside"], json!([]), "{layout}");
    assert_eq!(layout["scrolls"], json!(false), "{layout}");
    run(&client).await.expect("the edit succeeds on a phone");
    let (width, height, corner, _) = shown_result(&client).await;
    assert_eq!(
        (width, height, corner),
        (500, 400, vec![255, 255, 255, 255])
    );

    // The dashboard, open on loopback without accounts, counts those requests.
    client.goto(&format!("{base}/dashboard")).await.unwrap();
    let requests = client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("[data-stat='requests since start']"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(requests.parse::<u64>().unwrap() >= 3, "{requests}");
    let no_accounts = client.find(Locator::Id("no-accounts")).await.unwrap();
    assert!(no_accounts.is_displayed().await.unwrap());

    client.close().await.unwrap();
    std::fs::remove_dir_all(&dir).ok();
}
