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
    assert!(matches!(error, Error::UnsupportedFormat(_)), "{error}");
    assert!(error.to_string().contains("HEIC"), "{error}");
}

/// The sRGB transfer function (IEC 61966-2-1), encoded 0..1 to linear.
fn srgb_to_linear(v: f64) -> f64 {
    if v <= 0.04045 {
        v / 12.92
    } else {
        ((v + 0.055) / 1.055).powf(2.4)
    }
}

fn linear_to_srgb(v: f64) -> f64 {
    let v = v.clamp(0.0, 1.0);
    if v <= 0.0031308 {
        v * 12.92
    } else {
        1.055 * v.powf(1.0 / 2.4) - 0.055
    }
}

/// Colours inside both gamuts (sRGB's is the smaller), so no gamut mapping is involved.
const WIDE_GAMUT_COLOURS: [[u8; 3]; 6] = [
    [200, 100, 50],
    [50, 150, 200],
    [128, 128, 128],
    [230, 200, 180],
    [90, 160, 90],
    [240, 240, 235],
];

/// Display P3 → sRGB by hand: P3 uses sRGB's transfer function and D65 white; the matrix
/// takes linear P3 to linear sRGB (P3 → XYZ → sRGB from the two sets of primaries).
fn display_p3_to_srgb(p3: [u8; 3]) -> [f64; 3] {
    const M: [[f64; 3]; 3] = [
        [1.224_940_2, -0.224_940_2, 0.0],
        [-0.042_056_9, 1.042_057_1, 0.0],
        [-0.019_637_6, -0.078_636_1, 1.098_273_5],
    ];
    let linear = p3.map(|v| srgb_to_linear(v as f64 / 255.0));
    M.map(|row| {
        let v: f64 = (0..3).map(|i| row[i] * linear[i]).sum();
        linear_to_srgb(v) * 255.0
    })
}

/// Adobe RGB (1998) → sRGB by hand: gamma 563/256, D65 white, its primaries' matrix.
fn adobe_rgb_to_srgb(adobe: [u8; 3]) -> [f64; 3] {
    const M: [[f64; 3]; 3] = [
        [1.398_283_2, -0.398_283_1, 0.0],
        [0.0, 1.0, 0.0],
        [0.0, -0.042_938_3, 1.042_938_3],
    ];
    let linear = adobe.map(|v| (v as f64 / 255.0).powf(563.0 / 256.0));
    M.map(|row| {
        let v: f64 = (0..3).map(|i| row[i] * linear[i]).sum();
        linear_to_srgb(v) * 255.0
    })
}

/// One 4×4 block per colour, in a row, encoded by `encode` with `icc` embedded.
fn tagged_image(
    colours: &[[u8; 3]],
    icc: Vec<u8>,
    format: image::ImageFormat,
) -> (Vec<u8>, image::RgbImage) {
    use image::ImageEncoder;
    let pixels = image::RgbImage::from_fn(4 * colours.len() as u32, 4, |x, _| {
        image::Rgb(colours[x as usize / 4])
    });
    let mut bytes = Vec::new();
    let (w, h) = pixels.dimensions();
    match format {
        image::ImageFormat::Png => {
            let mut encoder = image::codecs::png::PngEncoder::new(&mut bytes);
            encoder.set_icc_profile(icc).unwrap();
            encoder
                .write_image(pixels.as_raw(), w, h, image::ExtendedColorType::Rgb8)
                .unwrap();
        }
        _ => {
            let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 100);
            encoder.set_icc_profile(icc).unwrap();
            encoder
                .write_image(pixels.as_raw(), w, h, image::ExtendedColorType::Rgb8)
                .unwrap();
        }
    }
    // What the file stores, read without colour management.
    let stored = image::load_from_memory(&bytes).unwrap().into_rgb8();
    (bytes, stored)
}

/// Photos from phones (Display P3) and cameras (Adobe RGB) are converted into sRGB on
/// decode: each block's centre matches the conversion computed by hand from the colour
/// spaces' published primaries and transfer functions.
#[test]
fn embedded_colour_profiles_are_converted_to_srgb() {
    type Convert = fn([u8; 3]) -> [f64; 3];
    let spaces: [(&str, moxcms::ColorProfile, Convert); 2] = [
        (
            "Display P3",
            moxcms::ColorProfile::new_display_p3(),
            display_p3_to_srgb,
        ),
        (
            "Adobe RGB",
            moxcms::ColorProfile::new_adobe_rgb(),
            adobe_rgb_to_srgb,
        ),
    ];
    for (space, profile, convert) in spaces {
        for format in [image::ImageFormat::Png, image::ImageFormat::Jpeg] {
            let icc = profile.encode().unwrap();
            let (bytes, stored) = tagged_image(&WIDE_GAMUT_COLOURS, icc, format);
            let decoded = decode(&bytes, DecodeLimits::default()).unwrap();
            let mut worst = 0.0f64;
            let mut moved = 0.0f64;
            for block in 0..WIDE_GAMUT_COLOURS.len() as u32 {
                let (x, y) = (block * 4 + 2, 2);
                let stored = stored.get_pixel(x, y).0;
                let expected = convert(stored);
                let got = decoded.get_pixel(x, y).0;
                for c in 0..3 {
                    worst = worst.max((got[c] as f64 - expected[c]).abs());
                    moved = moved.max((stored[c] as f64 - expected[c]).abs());
                }
                assert_eq!(got[3], 255);
            }
            println!("{space} {format:?}: worst {worst:.2} levels (unconverted: {moved:.1})");
            assert!(moved > 10.0, "{space}: the colours must differ from sRGB's");
            assert!(
                worst <= 1.5,
                "{space} {format:?}: {worst:.2} levels from the reference"
            );
        }
    }
}

/// Ink percentages of `decode/blocks-cmyk-icc.jpg` (`CMYK_INKS` in make_fixtures.py): 16×16
/// blocks, four in a row, two rows.
const CMYK_INKS: [[u8; 4]; 8] = [
    [100, 0, 0, 0],
    [0, 100, 0, 0],
    [0, 0, 100, 0],
    [0, 0, 0, 100],
    [60, 40, 40, 100],
    [30, 60, 0, 10],
    [0, 35, 85, 5],
    [15, 10, 10, 0],
];

/// CMYK JPEGs from print workflows are converted through their embedded press profile
/// (ghostscript's `default_cmyk.icc`): each block matches littleCMS's conversion of the same
/// inks (`blocks-cmyk-icc.srgb.png`, made by Pillow's ImageCms), whether the file stores the
/// inks as CMYK (the committed fixture, written by libjpeg through Pillow) or as YCCK (what
/// Photoshop writes; encoded here by jpeg-encoder with the same profile). Without the
/// profile, cyan would come out as (0, 255, 255), far from the press's (0, 176, 240).
#[test]
fn cmyk_jpegs_are_converted_through_their_profile() {
    let cmyk_jpeg = std::fs::read(fixture("decode/blocks-cmyk-icc.jpg")).unwrap();
    let reference = image::open(fixture("decode/blocks-cmyk-icc.srgb.png"))
        .unwrap()
        .into_rgb8();
    let icc = {
        use image::ImageDecoder;
        let mut jpeg =
            image::codecs::jpeg::JpegDecoder::new(std::io::Cursor::new(&cmyk_jpeg)).unwrap();
        jpeg.icc_profile().unwrap().unwrap()
    };
    let inks: Vec<u8> = (0..32u32)
        .flat_map(|y| (0..64u32).map(move |x| CMYK_INKS[(y / 16 * 4 + x / 16) as usize]))
        .flat_map(|block| block.map(|percent| (percent as f64 * 2.55).round() as u8))
        .collect();
    let mut ycck_jpeg = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut ycck_jpeg, 100);
    encoder.add_icc_profile(&icc).unwrap();
    encoder
        .encode(&inks, 64, 32, jpeg_encoder::ColorType::CmykAsYcck)
        .unwrap();

    for (flavour, bytes) in [("CMYK", &cmyk_jpeg), ("YCCK", &ycck_jpeg)] {
        let decoded = decode(bytes, DecodeLimits::default()).unwrap();
        assert_eq!(decoded.dimensions(), (64, 32), "{flavour}");
        let mut worst = 0;
        for (block, inks) in CMYK_INKS.iter().enumerate() {
            let (x, y) = (block as u32 % 4 * 16 + 8, block as u32 / 4 * 16 + 8);
            let want = reference.get_pixel(x, y).0;
            let got = decoded.get_pixel(x, y).0;
            let error = (0..3)
                .map(|c| (got[c] as i32 - want[c] as i32).abs())
                .max()
                .unwrap();
            println!("{flavour} {inks:?}: got {got:?}, littleCMS {want:?}");
            worst = worst.max(error);
            assert_eq!(got[3], 255, "{flavour}: opaque");
        }
        assert!(worst <= 2, "{flavour}: {worst} levels from littleCMS");
    }
    // The profile matters: the naive conversion, 255 × (1 − C) × (1 − K), gives (0, 255, 255)
    // for cyan, 79 levels from the press's.
    let cyan = reference.get_pixel(8, 8).0;
    assert!(cyan[1] < 200 && cyan[0] < 10, "press cyan is {cyan:?}");
}

/// A profile that cannot be read is ignored (the pixels are taken as sRGB), as browsers do.
#[test]
fn an_unreadable_profile_is_ignored() {
    let mut garbage = moxcms::ColorProfile::new_display_p3().encode().unwrap();
    garbage[36..40].copy_from_slice(b"nope");
    garbage.truncate(200);
    let (bytes, stored) = tagged_image(&WIDE_GAMUT_COLOURS, garbage, image::ImageFormat::Png);
    let decoded = decode(&bytes, DecodeLimits::default()).unwrap();
    for (got, want) in decoded.pixels().zip(stored.pixels()) {
        assert_eq!(got.0[..3], want.0);
    }
}

/// Cut inside its compressed data, a JPEG or WebP is refused: the codecs would fill the rest
/// with grey and report success (the 4,000-byte JPEG was answered 200).
#[test]
fn images_cut_inside_their_data_are_refused() {
    let jpeg = std::fs::read(fixture("images/chelsea.jpg")).unwrap();
    for cut in [4000, 623, jpeg.len() - 2] {
        let error = decode(&jpeg[..cut], DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(&error, Error::Decode(why) if why.contains("truncated")),
            "cut to {cut}: {error:?}"
        );
    }
    let webp = std::fs::read(fixture("decode/blocks.webp")).unwrap();
    let error = decode(&webp[..webp.len() - 1], DecodeLimits::default()).unwrap_err();
    assert!(matches!(error, Error::Decode(_)), "{error:?}");
}

/// A WebP whose frame claims to be larger than its canvas is refused before the codec
/// allocates for the frame (found by tests/fuzz.rs: 400 MB for a 1.5 KB file).
#[test]
fn a_webp_frame_larger_than_its_canvas_is_refused() {
    let bytes = std::fs::read(fixture("fuzz/webp/f267cffb2b8eab55")).unwrap();
    let error = decode(&bytes, DecodeLimits::default()).unwrap_err();
    assert!(
        matches!(&error, Error::Decode(why) if why.contains("9312x11776 frame in a 96x64")),
        "{error:?}"
    );
}
