//! Inputs for cutout's criterion benchmarks (the benchmarks are in this folder's *.rs).

use image::{RgbaImage, imageops::FilterType};

/// What the `cutout` binary does at start, so the benchmarks measure what it runs.
pub fn setup() {
    cutout_core::alloc::keep_large_buffers();
}

/// A photo from the test fixtures scaled to about `megapixels`, as JPEG bytes (quality 90).
pub fn jpeg_photo(megapixels: f64) -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/images/astronaut.jpg"
    );
    let photo = image::open(path).expect("fixture photo").into_rgb8();
    let side = (megapixels * 1e6).sqrt() as u32;
    let scaled = image::imageops::resize(&photo, side, side, FilterType::Triangle);
    let mut out = std::io::Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&scaled)
        .expect("encode");
    out.into_inner()
}

pub fn decoded(jpeg: &[u8]) -> RgbaImage {
    cutout_core::decode::decode(jpeg, Default::default()).expect("decode")
}
