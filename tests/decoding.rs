//! Every input flavour decodes to the same upright RGBA blocks (fixtures/decode, made by
//! fixtures/make_fixtures.py with Pillow).

use cutout_core::decode::{DecodeLimits, decode};
use cutout_core::error::Error;
use cutout_tests::fixture;

const RED: [u8; 3] = [220, 30, 30];
const GREEN: [u8; 3] = [30, 200, 40];
const BLUE: [u8; 3] = [20, 40, 210];
const WHITE: [u8; 3] = [250, 250, 250];

fn load(name: &str) -> Result<image::RgbaImage, Error> {
    decode(
        &std::fs::read(fixture(&format!("decode/{name}"))).unwrap(),
        DecodeLimits::default(),
    )
}

/// Checks the centre of each quadrant against the expected colours within `tolerance`.
fn assert_blocks(name: &str, expected: [[u8; 3]; 4], tolerance: i32) {
    let image = load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(image.dimensions(), (64, 48), "{name}");
    let centres = [(16, 12), (48, 12), (16, 36), (48, 36)];
    for ((x, y), want) in centres.into_iter().zip(expected) {
        let got = image.get_pixel(x, y).0;
        for c in 0..3 {
            assert!(
                (got[c] as i32 - want[c] as i32).abs() <= tolerance,
                "{name} at ({x},{y}): got {got:?}, want {want:?}"
            );
        }
    }
}

fn grey(c: [u8; 3]) -> [u8; 3] {
    // ITU-R 601-2 luma, as Pillow's convert("L").
    let l =
        ((c[0] as u32 * 299 + c[1] as u32 * 587 + c[2] as u32 * 114) as f32 / 1000.0).round() as u8;
    [l; 3]
}

#[test]
fn png_jpeg_webp() {
    assert_blocks("blocks.png", [RED, GREEN, BLUE, WHITE], 0);
    assert_blocks("blocks.webp", [RED, GREEN, BLUE, WHITE], 0);
    assert_blocks("blocks.jpg", [RED, GREEN, BLUE, WHITE], 6);
}

#[test]
fn grey_and_16_bit() {
    let greys = [grey(RED), grey(GREEN), grey(BLUE), grey(WHITE)];
    assert_blocks("blocks-grey.png", greys, 1);
    assert_blocks("blocks-grey16.png", greys, 1);
}

#[test]
fn cmyk_jpeg() {
    // Pillow's naive RGB→CMYK round-trips exactly; the JPEG adds a little noise.
    assert_blocks("blocks-cmyk.jpg", [RED, GREEN, BLUE, WHITE], 10);
}

#[test]
fn exif_orientation_is_applied() {
    assert_blocks("blocks-exif6.jpg", [RED, GREEN, BLUE, WHITE], 6);
}

#[test]
fn existing_alpha_is_kept() {
    let image = load("blocks-alpha.png").unwrap();
    assert_eq!(image.get_pixel(5, 5).0[3], 0);
    assert_eq!(image.get_pixel(20, 5).0, [RED[0], RED[1], RED[2], 255]);
}

#[test]
fn truncated_and_garbage_are_errors() {
    assert!(matches!(load("truncated.jpg"), Err(Error::Decode(_))));
    let err = decode(b"hello, not an image", DecodeLimits::default()).unwrap_err();
    assert!(matches!(err, Error::Decode(_)), "{err}");
}

#[test]
fn oversized_images_are_refused_from_the_header() {
    let bytes = std::fs::read(fixture("decode/blocks.png")).unwrap();
    let err = decode(&bytes, DecodeLimits { max_pixels: 1000 }).unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err}");
}

#[test]
fn heic_is_named_in_the_error() {
    // The first box of an iPhone photo: size, "ftyp", major brand "heic".
    let mut bytes = vec![0, 0, 0, 24];
    bytes.extend_from_slice(b"ftypheic\0\0\0\0mif1heic");
    bytes.resize(64, 0);
    let error = decode(&bytes, DecodeLimits::default()).unwrap_err();
    assert!(error.to_string().contains("HEIC"), "{error}");
}
