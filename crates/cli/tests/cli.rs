//! The `cutout` binary as a user runs it, on the software adapter.

use std::path::Path;
use std::process::Command;

fn cutout() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cutout"));
    command
        .env("CUTOUT_DEVICE", "cpu")
        .env("CUTOUT_MODELS", "/nonexistent");
    command
}

fn photo(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/images")
        .join(name)
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
