//! Property tests over every parser the network reaches: the three API dialects' parameters,
//! colour and spacing syntaxes, request bodies (multipart, urlencoded, JSON), URL and address
//! checks, and the image decoders on mutated real images (truncated, bit-flipped, wrong magic,
//! huge dimensions, CMYK, 16-bit, animated).
//!
//! The property everywhere: no panic, no allocation beyond the input's limits (this binary's
//! global allocator counts every byte per thread), and either a valid result or a typed error.
//!
//! Deterministic: a fixed seed and case count, so a run of `cargo test` is a run of the same
//! cases. `cargo xtask fuzz --minutes N` repeats this binary with random seeds
//! (`CUTOUT_FUZZ_SEED`) and more cases (`CUTOUT_FUZZ_SCALE`), and saves each failing input,
//! shrunk, under `fixtures/fuzz/TARGET/` (`CUTOUT_FUZZ_SAVE`), where every later run replays
//! it first: crashes found stay found.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Debug;
use std::net::IpAddr;
use std::path::PathBuf;

use bytes::Bytes;
use cutout_core::decode::{DecodeLimits, decode, dimensions};
use cutout_core::edit::geometry::{self, Rect};
use cutout_core::edit::params::{Kind, Param, parse_spacing};
use cutout_core::edit::{Color, Edit, FieldError, Length, photoroom, removebg, simple};
use cutout_core::error::Error;
use cutout_server::body::{self, BodyError};
use cutout_server::fetch::{FetchError, check_url, is_public};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

// ---------------------------------------------------------------------------------------
// Counting every allocation of the thread that runs a case.

/// The system allocator, counting live bytes and their peak per thread.
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn grew(bytes: usize) {
    // `try_with`: a thread's locals may already be gone while it frees its last memory.
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add(bytes);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn shrank(bytes: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(bytes)));
}

// SAFETY: every call is passed to `System` unchanged; the counters are thread-local cells
// that never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: `pointer` came from this allocator, which is `System`'s, with `layout`.
        unsafe { System.dealloc(pointer, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; `new_size` is the caller's, valid for `layout`'s align.
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            // Counted as if both blocks were live at once, as they may be while copying.
            grew(new_size);
            shrank(layout.size());
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`, returning its result and the most bytes it held at once on this thread.
fn peak_bytes<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(start));
    let value = f();
    (value, PEAK.with(Cell::get) - start)
}

const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------------------
// The runner: saved regressions first, then the seeded cases.

fn scale() -> u32 {
    std::env::var("CUTOUT_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

fn seed() -> [u8; 32] {
    let mut seed = *b"cutout fuzz: the seed of record.";
    if let Some(n) = std::env::var("CUTOUT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        seed[..8].copy_from_slice(&n.to_le_bytes());
    }
    seed
}

fn regressions(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/fuzz")
        .join(target)
}

/// How a target's inputs are saved as regression files and read back.
trait Saved: Sized {
    fn save(&self) -> Vec<u8>;
    fn load(bytes: &[u8]) -> Self;
}

fn fuzz<T: Saved + Clone + Debug>(
    target: &str,
    cases: u32,
    strategy: impl Strategy<Value = T>,
    check: impl Fn(&T) -> Result<(), TestCaseError>,
) {
    let dir = regressions(target);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths {
            let input = T::load(&std::fs::read(&path).unwrap());
            if let Err(e) = check(&input) {
                panic!("{target}: saved case {} fails again: {e}", path.display());
            }
        }
    }
    let config = Config {
        cases: cases * scale(),
        failure_persistence: None,
        // A shrink runs the parser again; a few hundred steps find a small input.
        max_shrink_iters: 512,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed()));
    match runner.run(&strategy, |input| check(&input)) {
        Ok(()) => {}
        Err(TestError::Fail(why, input)) => {
            let mut saved = String::new();
            if std::env::var_os("CUTOUT_FUZZ_SAVE").is_some() {
                let bytes = input.save();
                std::fs::create_dir_all(&dir).unwrap();
                let name = format!("{:016x}", fnv1a(&bytes));
                let path = dir.join(name);
                std::fs::write(&path, bytes).unwrap();
                saved = format!(" (saved as {})", path.display());
            }
            panic!("{target}: {why}{saved}\nminimal input: {input:?}");
        }
        Err(TestError::Abort(why)) => panic!("{target}: aborted: {why}"),
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

// ---------------------------------------------------------------------------------------
// Parameters of the three dialects.

#[derive(Debug, Clone)]
struct Pairs(Vec<(String, String)>);

/// Text of any kind: numbers in every notation, units, sizes, words the APIs use, and
/// arbitrary Unicode.
fn any_value() -> BoxedStrategy<String> {
    prop_oneof![
        any::<f64>().prop_map(|v| v.to_string()),
        any::<i64>().prop_map(|v| v.to_string()),
        (-2.0f64..2.0).prop_map(|v| v.to_string()),
        (-50i32..300).prop_map(|v| format!("{v}%")),
        (-10i64..100_000).prop_map(|v| format!("{v}px")),
        (0u64..200_000, 0u64..200_000).prop_map(|(w, h)| format!("{w}x{h}")),
        prop::sample::select(vec![
            "",
            " ",
            "true",
            "false",
            "1",
            "0",
            "auto",
            "full",
            "preview",
            "4k",
            "NaN",
            "inf",
            "-inf",
            "-0",
            "1e309",
            "1e-320",
            "0x10",
            "+5",
            "５",
            "00000000000000000000001",
            "originalImage",
            "croppedSubject",
            "transparent",
            "#",
            "#ff",
            "#gggggg",
            "rgb(1,2)",
            "rgba(255,255,255,2)",
            "rgb(256,0,0)",
            "10%,20%",
            "50% 50%",
        ])
        .prop_map(String::from),
        "[0-9a-zA-Z#%.,()x -]{0,24}",
        ".{0,64}",
    ]
    .boxed()
}

/// Mostly values of the parameter's declared kind, so that whole requests often parse and
/// the layout behind them is exercised too; sometimes anything.
fn value_of(kind: Kind) -> BoxedStrategy<String> {
    let fitting: BoxedStrategy<String> = match kind {
        Kind::Bool => prop::sample::select(vec!["true", "false", "1", "0"])
            .prop_map(String::from)
            .boxed(),
        Kind::Number { min, max } => prop_oneof![
            (min..=max).prop_map(|v| v.to_string()),
            Just(min.to_string()),
            Just(max.to_string()),
        ]
        .boxed(),
        Kind::Integer { min, max } => prop_oneof![
            (min..=max.min(u64::MAX - 1)).prop_map(|v| v.to_string()),
            Just(max.to_string()),
        ]
        .boxed(),
        Kind::Enum(values) => prop::sample::select(values.to_vec())
            .prop_map(String::from)
            .boxed(),
        Kind::Color => prop_oneof![
            any::<[u8; 4]>()
                .prop_map(|c| format!("#{:02x}{:02x}{:02x}{:02x}", c[0], c[1], c[2], c[3])),
            any::<[u8; 3]>().prop_map(|c| format!("{:02X}{:02X}{:02X}", c[0], c[1], c[2])),
            prop::sample::select(vec!["red", "white", "transparent", "rgb(1, 2, 3)"])
                .prop_map(String::from),
        ]
        .boxed(),
        Kind::Spacing => prop_oneof![
            (0.0f64..0.5).prop_map(|v| v.to_string()),
            (0u32..50).prop_map(|v| format!("{v}%")),
            (0u32..5000).prop_map(|v| format!("{v}px")),
        ]
        .boxed(),
        Kind::Url => Just("https://images.example/photo.jpg".to_string()).boxed(),
        Kind::Text | Kind::File => any_value(),
    };
    prop_oneof![4 => fitting, 1 => any_value()].boxed()
}

/// Up to ten parameters, mostly named from `table`, sometimes not.
fn pairs(table: &'static [Param]) -> impl Strategy<Value = Pairs> {
    let declared = (0..table.len()).prop_flat_map(move |i| {
        let param = table[i];
        (Just(param.name.to_string()), value_of(param.kind))
    });
    let pair = prop_oneof![
        9 => declared,
        1 => ("[a-zA-Z_.]{0,20}", any_value()),
    ];
    prop::collection::vec(pair, 0..10).prop_map(Pairs)
}

/// A dialect's parameter parser.
type Parser = fn(Vec<(String, String)>) -> Result<Edit, FieldError>;

/// Largest canvas an accepted request may ask for: `full`, PhotoRoom's largest preset.
const MAX_CANVAS_PIXELS: u64 = 36_000_000;

/// The dialect parser's property: an accepted request lays out on any image without a
/// panic, to a canvas within the limits; a refused one names a parameter.
fn check_parameters(
    table: &[Param],
    parse: Parser,
    input: &Pairs,
    image: [u32; 2],
    subject: [f64; 4],
) -> Result<(), TestCaseError> {
    let bytes_in: usize = input.0.iter().map(|(k, v)| k.len() + v.len()).sum();
    let (parsed, peak) = peak_bytes(|| parse(input.0.clone()));
    prop_assert!(
        peak <= MIB + 64 * bytes_in,
        "parsing {bytes_in} bytes held {peak} bytes"
    );
    let edit = match parsed {
        Ok(edit) => edit,
        Err(error) => {
            let named = table.iter().any(|p| p.name == error.field)
                || input.0.iter().any(|(k, _)| *k == error.field)
                // A rule between parameters (remove.bg's multiple_bg_sources) names them.
                || input
                    .0
                    .iter()
                    .any(|(k, _)| !k.is_empty() && error.message.contains(k.as_str()))
                // Edit::validate names PhotoRoom's v2 fields whatever the dialect.
                || photoroom::V2_EDIT.iter().any(|p| p.name == error.field)
                || ["margin", "padding", "size", "scale", "position"]
                    .iter()
                    .any(|f| error.field.starts_with(f));
            prop_assert!(named, "the error names no parameter: {error:?}");
            prop_assert!(!error.message.is_empty());
            return Ok(());
        }
    };
    prop_assert!(edit.validate().is_ok(), "an accepted edit fails validate()");
    // The tight subject box somewhere in the image, at least one pixel.
    let [fx0, fy0, fw, fh] = subject;
    let (w, h) = (image[0] as f64, image[1] as f64);
    let x0 = (fx0 * w).floor().min(w - 1.0);
    let y0 = (fy0 * h).floor().min(h - 1.0);
    let rect = Rect::new(
        x0,
        y0,
        (x0 + (fw * w).ceil()).clamp(x0 + 1.0, w),
        (y0 + (fh * h).ceil()).clamp(y0 + 1.0, h),
    );
    let placed = geometry::place(&edit.layout, image, Some(rect));
    let mut placement = match placed {
        Ok(placement) => placement,
        Err(error) => {
            prop_assert!(!error.field.is_empty());
            return Ok(());
        }
    };
    if let Some(max) = edit.max_pixels {
        placement = placement.within_pixels(max);
    }
    if let Some(max) = edit.max_side {
        placement = placement.within_side(max);
    }
    let [cw, ch] = placement.canvas;
    prop_assert!(cw >= 1 && ch >= 1, "an empty canvas {cw}x{ch}");
    // remove.bg's crop margins may grow the canvas past the input (up to 50 MP with its
    // `size=50MP`); its size preset then caps it, rounding aside.
    let preset = edit.max_pixels.map_or(0, |max| max + (cw + ch) as u64);
    prop_assert!(edit.max_pixels.is_none_or(|max| max <= 50_000_000));
    let limit = MAX_CANVAS_PIXELS
        .max(image[0] as u64 * image[1] as u64)
        .max(preset);
    prop_assert!(
        cw as u64 * ch as u64 <= limit,
        "a {cw}x{ch} canvas from a {}x{} image",
        image[0],
        image[1]
    );
    prop_assert!(
        cw <= 65_535 && ch <= 65_535,
        "a {cw}x{ch} canvas is wider than the device can dispatch"
    );
    prop_assert!(placement.scale.is_finite() && placement.scale > 0.0);
    prop_assert!(placement.offset.iter().all(|v| v.is_finite()));
    Ok(())
}

fn image_and_subject() -> impl Strategy<Value = ([u32; 2], [f64; 4])> {
    (
        prop_oneof![
            (1u32..=6000, 1u32..=6000).prop_map(|(w, h)| [w, h]),
            Just([1, 1]),
            Just([6250, 4000]),
            Just([25_000, 1000]),
        ],
        (0.0f64..1.0, 0.0f64..1.0, 0.0f64..1.0, 0.0f64..1.0).prop_map(|(a, b, c, d)| [a, b, c, d]),
    )
}

fn dialect(target: &str, table: &'static [Param], parse: Parser) {
    fuzz(
        target,
        2000,
        (pairs(table), image_and_subject()).prop_map(|(p, (image, subject))| Case {
            pairs: p,
            image,
            subject,
        }),
        |case| check_parameters(table, parse, &case.pairs, case.image, case.subject),
    );
}

/// A request's parameters with the image size and subject box they are laid out on.
#[derive(Debug, Clone)]
struct Case {
    pairs: Pairs,
    image: [u32; 2],
    subject: [f64; 4],
}

impl Saved for Case {
    fn save(&self) -> Vec<u8> {
        serde_json::to_vec(&(&self.pairs.0, self.image, self.subject)).unwrap()
    }
    fn load(bytes: &[u8]) -> Self {
        let (pairs, image, subject) = serde_json::from_slice(bytes).unwrap();
        Case {
            pairs: Pairs(pairs),
            image,
            subject,
        }
    }
}

#[test]
fn fuzz_photoroom_v2_edit_parameters() {
    dialect("photoroom-v2", photoroom::V2_EDIT, photoroom::parse_v2_edit);
}

#[test]
fn fuzz_photoroom_v1_segment_parameters() {
    dialect(
        "photoroom-v1",
        photoroom::V1_SEGMENT,
        photoroom::parse_v1_segment,
    );
}

#[test]
fn fuzz_removebg_parameters() {
    dialect("removebg", removebg::REMOVEBG, removebg::parse);
}

#[test]
fn fuzz_simple_parameters() {
    dialect("simple", simple::SIMPLE, simple::parse);
}

// ---------------------------------------------------------------------------------------
// Colour and spacing syntaxes, against hand-computed values.

#[derive(Debug, Clone)]
struct Text(String);

impl Saved for Text {
    fn save(&self) -> Vec<u8> {
        self.0.clone().into_bytes()
    }
    fn load(bytes: &[u8]) -> Self {
        Text(String::from_utf8_lossy(bytes).into_owned())
    }
}

#[derive(Debug, Clone)]
enum ColourText {
    Hex {
        rgba: [u8; 4],
        digits: usize,
        hash: bool,
        upper: bool,
    },
    Functional {
        rgb: [u16; 3],
        alpha: Option<f32>,
    },
    Any(String),
}

impl ColourText {
    fn text(&self) -> String {
        match *self {
            ColourText::Hex {
                rgba,
                digits,
                hash,
                upper,
            } => {
                let hex: String = match digits {
                    3 | 4 => rgba[..digits]
                        .iter()
                        .map(|c| format!("{:x}", c >> 4))
                        .collect(),
                    _ => rgba[..digits / 2]
                        .iter()
                        .map(|c| format!("{c:02x}"))
                        .collect(),
                };
                let hex = if upper { hex.to_uppercase() } else { hex };
                format!("{}{hex}", if hash { "#" } else { "" })
            }
            ColourText::Functional { rgb, alpha: None } => {
                format!("rgb({}, {},{})", rgb[0], rgb[1], rgb[2])
            }
            ColourText::Functional {
                rgb,
                alpha: Some(a),
            } => {
                format!("RGBA( {},{} ,{}, {a})", rgb[0], rgb[1], rgb[2])
            }
            ColourText::Any(ref text) => text.clone(),
        }
    }

    /// What the text means, computed here from the CSS rules, not by the parser.
    fn expected(&self) -> Option<Option<Color>> {
        match *self {
            ColourText::Hex { rgba, digits, .. } => {
                let mut c = [255u8; 4];
                for (i, channel) in c.iter_mut().enumerate() {
                    *channel = match digits {
                        3 | 4 if i < digits => (rgba[i] >> 4) * 17,
                        6 | 8 if i < digits / 2 => rgba[i],
                        _ => 255,
                    };
                }
                Some(Some(Color(c)))
            }
            ColourText::Functional { rgb, alpha } => {
                if rgb.iter().any(|&v| v > 255) || alpha.is_some_and(|a| !(0.0..=1.0).contains(&a))
                {
                    return Some(None);
                }
                let a = alpha.map_or(255, |a| (a * 255.0).round() as u8);
                Some(Some(Color([rgb[0] as u8, rgb[1] as u8, rgb[2] as u8, a])))
            }
            ColourText::Any(_) => None,
        }
    }
}

impl Saved for ColourText {
    fn save(&self) -> Vec<u8> {
        self.text().into_bytes()
    }
    fn load(bytes: &[u8]) -> Self {
        ColourText::Any(String::from_utf8_lossy(bytes).into_owned())
    }
}

#[test]
fn fuzz_colours() {
    let strategy = prop_oneof![
        (
            any::<[u8; 4]>(),
            prop::sample::select(vec![3usize, 4, 6, 8]),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(rgba, digits, hash, upper)| ColourText::Hex {
                rgba,
                digits,
                hash,
                upper
            }),
        (
            prop::array::uniform3(0u16..300),
            prop::option::of(prop_oneof![0.0f32..=1.0, -1.0f32..2.0])
        )
            .prop_map(|(rgb, alpha)| ColourText::Functional { rgb, alpha }),
        "[#a-fA-F0-9rgbaRGBA(), .-]{0,16}".prop_map(ColourText::Any),
        ".{0,40}".prop_map(ColourText::Any),
    ];
    fuzz("colour", 2000, strategy, |case| {
        let text = case.text();
        let (parsed, peak) = peak_bytes(|| Color::parse(&text));
        prop_assert!(peak <= 1024 + 4 * text.len(), "{peak} bytes for {text:?}");
        if let Some(expected) = case.expected() {
            prop_assert_eq!(parsed, expected, "{:?}", text);
        }
        Ok(())
    });
}

#[test]
fn fuzz_spacings() {
    let strategy = prop_oneof![
        (
            -1e6f32..1e6,
            prop::sample::select(vec!["", "%", "px", " px", "% "])
        )
            .prop_map(|(v, unit)| Text(format!("{v}{unit}"))),
        "[0-9.e%px +-]{0,12}".prop_map(Text),
        ".{0,32}".prop_map(Text),
    ];
    fuzz("spacing", 2000, strategy, |Text(text)| {
        let (parsed, peak) = peak_bytes(|| parse_spacing(text));
        prop_assert!(peak <= 1024 + 4 * text.len());
        let trimmed = text.trim();
        let number = |s: &str| s.trim().parse::<f32>().ok().filter(|v| v.is_finite());
        let expected = if let Some(px) = trimmed.strip_suffix("px") {
            number(px).map(Length::Pixels)
        } else if let Some(pct) = trimmed.strip_suffix('%') {
            number(pct).map(|p| Length::Ratio(p / 100.0))
        } else {
            number(trimmed).map(Length::Ratio)
        };
        prop_assert_eq!(format!("{parsed:?}"), format!("{expected:?}"));
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------
// Request bodies.

#[derive(Debug, Clone)]
struct Body {
    content_type: String,
    bytes: Vec<u8>,
}

impl Saved for Body {
    fn save(&self) -> Vec<u8> {
        let mut out = self.content_type.clone().into_bytes();
        out.push(b'\n');
        out.extend_from_slice(&self.bytes);
        out
    }
    fn load(bytes: &[u8]) -> Self {
        let split = bytes
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(bytes.len());
        Body {
            content_type: String::from_utf8_lossy(&bytes[..split]).into_owned(),
            bytes: bytes.get(split + 1..).unwrap_or_default().to_vec(),
        }
    }
}

const BOUNDARY: &str = "cutout-fuzz-boundary";

#[derive(Debug, Clone)]
struct Part {
    name: String,
    file_name: Option<String>,
    content_type: Option<String>,
    data: Vec<u8>,
}

fn multipart(parts: &[Part], closed: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        let mut disposition = format!("Content-Disposition: form-data; name=\"{}\"", part.name);
        if let Some(file) = &part.file_name {
            disposition.push_str(&format!("; filename=\"{file}\""));
        }
        out.extend_from_slice(disposition.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(mime) = &part.content_type {
            out.extend_from_slice(format!("Content-Type: {mime}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&part.data);
        out.extend_from_slice(b"\r\n");
    }
    if closed {
        out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    }
    out
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<f64>()
            .prop_map(|v| serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)),
        any::<i64>().prop_map(|v| Value::Number(v.into())),
        ".{0,16}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-zA-Z.]{0,12}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Body> {
    let part = (
        "[a-z_.]{0,12}",
        prop::option::of("[a-z.]{1,10}"),
        prop::option::of(prop::sample::select(vec![
            "text/plain",
            "image/jpeg",
            "application/octet-stream",
            "text/plain; charset=utf-8",
            "garbage",
        ])),
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            ".{0,32}".prop_map(String::into_bytes),
        ],
    )
        .prop_map(|(name, file_name, content_type, data)| Part {
            name,
            file_name,
            content_type: content_type.map(String::from),
            data,
        });
    let multipart_body = (prop::collection::vec(part, 0..5), any::<bool>())
        .prop_map(|(parts, closed)| multipart(&parts, closed));
    let content_types = prop::sample::select(vec![
        "multipart/form-data; boundary=cutout-fuzz-boundary",
        "Multipart/Form-Data; boundary=\"cutout-fuzz-boundary\"",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "application/x-www-form-urlencoded",
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "",
    ])
    .prop_map(String::from);
    let bytes = prop_oneof![
        multipart_body.clone(),
        (multipart_body, mutations()).prop_map(|(bytes, m)| mutate(bytes, &m, Format::Other)),
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        (json_value(), mutations()).prop_map(|(v, m)| mutate(
            serde_json::to_vec(&v).unwrap(),
            &m,
            Format::Other
        )),
        "([a-zA-Z.%0-9+]{0,8}=[a-zA-Z.%0-9+]{0,8}&){0,6}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..256),
    ];
    (prop_oneof![content_types, ".{0,60}"], bytes).prop_map(|(content_type, bytes)| Body {
        content_type,
        bytes,
    })
}

#[test]
fn fuzz_request_bodies() {
    fuzz("body", 2000, body(), |input| {
        let bytes = Bytes::from(input.bytes.clone());
        let (parsed, peak) =
            peak_bytes(|| pollster::block_on(body::parse(&input.content_type, bytes)));
        prop_assert!(
            peak <= MIB + 16 * input.bytes.len(),
            "{peak} bytes held for a {}-byte body",
            input.bytes.len()
        );
        match parsed {
            Ok(form) => {
                let texts: usize = form.fields.iter().map(|(k, v)| k.len() + v.len()).sum();
                let files: usize = form.files.iter().map(|(_, f)| f.len()).sum();
                // Percent-decoding only shrinks; nothing is invented.
                prop_assert!(files <= input.bytes.len());
                prop_assert!(texts <= 3 * input.bytes.len() + 16 * form.fields.len());
            }
            Err(
                BodyError::Malformed(why) | BodyError::Unsupported(why) | BodyError::TooSlow(why),
            ) => prop_assert!(!why.is_empty()),
            Err(BodyError::TooLarge(_)) => prop_assert!(false, "no limit was given to exceed"),
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------
// URLs and the addresses they resolve to.

#[test]
fn fuzz_urls() {
    let structured = (
        prop::sample::select(vec![
            "http", "https", "HTTPS", "file", "ftp", "gopher", "data", "",
        ]),
        prop::sample::select(vec!["://", ":", ":///", "//"]),
        prop_oneof![
            Just(String::new()),
            "[a-z0-9.-]{1,20}",
            any::<std::net::Ipv4Addr>().prop_map(|ip| ip.to_string()),
            any::<std::net::Ipv6Addr>().prop_map(|ip| format!("[{ip}]")),
            Just("user:pass@host".to_string()),
        ],
        prop::option::of(any::<u16>()),
        ".{0,20}",
    )
        .prop_map(|(scheme, sep, host, port, path)| {
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            Text(format!("{scheme}{sep}{host}{port}/{path}"))
        });
    let strategy = prop_oneof![structured, ".{0,80}".prop_map(Text)];
    fuzz("url", 2000, strategy, |Text(url)| {
        let (checked, peak) = peak_bytes(|| check_url(url));
        prop_assert!(peak <= MIB + 16 * url.len());
        match checked {
            Ok(uri) => {
                let scheme = uri.scheme_str().unwrap_or("").to_ascii_lowercase();
                prop_assert!(scheme == "http" || scheme == "https", "{url} accepted");
                prop_assert!(uri.host().is_some_and(|h| !h.is_empty()));
            }
            Err(FetchError::Refused(why)) => prop_assert!(!why.is_empty()),
            Err(other) => prop_assert!(false, "checking made a request: {other}"),
        }
        Ok(())
    });
}

/// Blocks that are not globally reachable, from IANA's IPv4 and IPv6 Special-Purpose
/// Address Registries, plus multicast and the deprecated IPv6 blocks.
const NOT_PUBLIC: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/96",
    "64:ff9b::/32",
    "100::/64",
    "2001::/23",
    "2001:db8::/32",
    "2002::/16",
    "3fff::/20",
    "5f00::/16",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
];

/// IPv6 blocks that carry an IPv4 address in their last 32 bits, judged by it.
const EMBEDS_IPV4: &[&str] = &["::ffff:0:0/96", "64:ff9b::/96"];

fn in_block(ip: IpAddr, block: &str) -> bool {
    let (base, bits) = block.split_once('/').unwrap();
    let bits: u32 = bits.parse().unwrap();
    let (ip, base, width) = match (ip, base.parse::<IpAddr>().unwrap()) {
        (IpAddr::V4(ip), IpAddr::V4(base)) => (u32::from(ip) as u128, u32::from(base) as u128, 32),
        (IpAddr::V6(ip), IpAddr::V6(base)) => (u128::from(ip), u128::from(base), 128),
        _ => return false,
    };
    let shift = width - bits;
    (shift >= 128) || (ip >> shift) == (base >> shift)
}

fn public_by_registry(ip: IpAddr) -> bool {
    if let IpAddr::V6(v6) = ip
        && EMBEDS_IPV4.iter().any(|b| in_block(ip, b))
    {
        let v4 = std::net::Ipv4Addr::from((u128::from(v6) & 0xffff_ffff) as u32);
        return public_by_registry(IpAddr::V4(v4));
    }
    !NOT_PUBLIC.iter().any(|b| in_block(ip, b))
}

#[derive(Debug, Clone)]
struct Address(IpAddr);

impl Saved for Address {
    fn save(&self) -> Vec<u8> {
        self.0.to_string().into_bytes()
    }
    fn load(bytes: &[u8]) -> Self {
        Address(std::str::from_utf8(bytes).unwrap().trim().parse().unwrap())
    }
}

#[test]
fn fuzz_addresses_follow_the_special_purpose_registries() {
    // Random addresses rarely land in a small block: also draw from each block's edges.
    let blocks: Vec<&str> = NOT_PUBLIC.iter().chain(EMBEDS_IPV4).copied().collect();
    let near_a_block = (prop::sample::select(blocks), any::<u128>(), any::<bool>()).prop_map(
        |(block, noise, outside)| {
            let (base, bits) = block.split_once('/').unwrap();
            let bits: u32 = bits.parse().unwrap();
            let base: IpAddr = base.parse().unwrap();
            let width = if base.is_ipv4() { 32 } else { 128 };
            // Inside: keep the prefix; just outside: flip the prefix's last bit.
            let host_mask = if bits == width {
                0
            } else {
                u128::MAX >> (128 - width + bits)
            };
            let mut value = match base {
                IpAddr::V4(b) => u32::from(b) as u128,
                IpAddr::V6(b) => u128::from(b),
            };
            value = (value & !host_mask) | (noise & host_mask);
            if outside && bits > 0 {
                value ^= 1 << (width - bits);
            }
            Address(match base {
                IpAddr::V4(_) => IpAddr::V4((value as u32).into()),
                IpAddr::V6(_) => IpAddr::V6(value.into()),
            })
        },
    );
    let strategy = prop_oneof![
        any::<std::net::Ipv4Addr>().prop_map(|ip| Address(IpAddr::V4(ip))),
        any::<std::net::Ipv6Addr>().prop_map(|ip| Address(IpAddr::V6(ip))),
        near_a_block,
    ];
    fuzz("address", 4000, strategy, |Address(ip)| {
        prop_assert_eq!(is_public(*ip), public_by_registry(*ip), "{}", ip);
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------
// Image decoders on mutated real images.

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Jpeg,
    Png,
    WebP,
    Other,
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Keep only the bytes before this point.
    Truncate(Index),
    FlipBit {
        at: Index,
        bit: u8,
        in_header: bool,
    },
    SetByte {
        at: Index,
        value: u8,
    },
    Insert {
        at: Index,
        bytes: Vec<u8>,
    },
    Remove {
        at: Index,
        len: usize,
    },
    /// Rewrite the width and height in the format's header (PNG's CRC recomputed).
    Dimensions(u32, u32),
    /// Another format's signature in place of this one's.
    Magic(usize),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let one = prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 0u8..8, any::<bool>())
            .prop_map(|(at, bit, in_header)| Mutation::FlipBit { at, bit, in_header }),
        (any::<Index>(), any::<u8>()).prop_map(|(at, value)| Mutation::SetByte { at, value }),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<Index>(), 1usize..64).prop_map(|(at, len)| Mutation::Remove { at, len }),
        (
            prop_oneof![
                1u32..=70_000,
                Just(65_535),
                Just(16_384),
                Just(0),
                any::<u32>()
            ],
            prop_oneof![
                1u32..=70_000,
                Just(65_535),
                Just(16_384),
                Just(0),
                any::<u32>()
            ]
        )
            .prop_map(|(w, h)| Mutation::Dimensions(w, h)),
        (0usize..MAGICS.len()).prop_map(Mutation::Magic),
    ];
    prop::collection::vec(one, 1..4)
}

const MAGICS: &[&[u8]] = &[
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0",
    b"RIFF\0\0\0\0WEBPVP8 ",
    b"GIF89a",
    b"BM",
    b"II*\0",
    b"\0\0\0\x18ftypheic",
    b"",
];

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation], format: Format) -> Vec<u8> {
    for mutation in mutations {
        let len = bytes.len();
        match mutation {
            Mutation::Truncate(at) if len > 0 => bytes.truncate(at.index(len)),
            Mutation::FlipBit { at, bit, in_header } if len > 0 => {
                let i = at.index(if *in_header { len.min(64) } else { len });
                bytes[i] ^= 1 << bit;
            }
            Mutation::SetByte { at, value } if len > 0 => bytes[at.index(len)] = *value,
            Mutation::Insert { at, bytes: new } => {
                let i = at.index(len + 1);
                bytes.splice(i..i, new.iter().copied());
            }
            Mutation::Remove { at, len: n } if len > 0 => {
                let i = at.index(len);
                bytes.drain(i..(i + n).min(len));
            }
            Mutation::Dimensions(w, h) => set_dimensions(&mut bytes, format, *w, *h),
            Mutation::Magic(which) => {
                let magic = MAGICS[*which];
                let n = magic.len().min(bytes.len());
                bytes[..n].copy_from_slice(&magic[..n]);
            }
            _ => {}
        }
    }
    bytes
}

fn set_dimensions(bytes: &mut [u8], format: Format, w: u32, h: u32) {
    match format {
        Format::Png if bytes.len() >= 33 && &bytes[12..16] == b"IHDR" => {
            bytes[16..20].copy_from_slice(&w.to_be_bytes());
            bytes[20..24].copy_from_slice(&h.to_be_bytes());
            let crc = crc32fast::hash(&bytes[12..29]);
            bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        }
        Format::Jpeg => {
            // The first start-of-frame marker (baseline, extended or progressive).
            let sof = bytes
                .windows(2)
                .position(|m| m[0] == 0xff && (0xc0..=0xc2).contains(&m[1]));
            if let Some(i) = sof.filter(|i| i + 9 <= bytes.len()) {
                bytes[i + 5..i + 7].copy_from_slice(&(h as u16).to_be_bytes());
                bytes[i + 7..i + 9].copy_from_slice(&(w as u16).to_be_bytes());
            }
        }
        Format::WebP if bytes.len() >= 30 => match &bytes[12..16] {
            b"VP8X" => {
                bytes[24..27].copy_from_slice(&w.saturating_sub(1).to_le_bytes()[..3]);
                bytes[27..30].copy_from_slice(&h.saturating_sub(1).to_le_bytes()[..3]);
            }
            b"VP8L" => {
                let packed =
                    (w.saturating_sub(1) & 0x3fff) | ((h.saturating_sub(1) & 0x3fff) << 14);
                let keep = (bytes[24] as u32 & 0xf0) << 24;
                bytes[21..25].copy_from_slice(&(packed | keep).to_le_bytes());
            }
            b"VP8 " => {
                bytes[26..28].copy_from_slice(&(w as u16).to_le_bytes());
                bytes[28..30].copy_from_slice(&(h as u16).to_le_bytes());
            }
            _ => {}
        },
        _ => {}
    }
}

#[derive(Clone)]
struct MutatedImage {
    base: &'static str,
    mutations: Vec<Mutation>,
    bytes: Vec<u8>,
    /// Where the unmutated image's data ends.
    data_end: usize,
}

impl Debug for MutatedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} with {:?}: {} bytes, starting {:02x?}",
            self.base,
            self.mutations,
            self.bytes.len(),
            &self.bytes[..self.bytes.len().min(48)]
        )
    }
}

impl Saved for MutatedImage {
    fn save(&self) -> Vec<u8> {
        self.bytes.clone()
    }
    fn load(bytes: &[u8]) -> Self {
        MutatedImage {
            base: "saved",
            mutations: Vec::new(),
            bytes: bytes.to_vec(),
            data_end: 0,
        }
    }
}

/// The decode limit in the fuzz runs: small, so a header that claims more is refused.
const MAX_PIXELS: u64 = 4_000_000;

fn check_decode(image: &MutatedImage) -> Result<(), TestCaseError> {
    let bytes = &image.bytes;
    let limits = DecodeLimits {
        max_pixels: MAX_PIXELS,
    };
    let (decoded, peak) = peak_bytes(|| {
        let _ = dimensions(bytes);
        decode(bytes, limits)
    });
    // What `decode` lets the codec allocate (the pixels at 16 bits per channel, twice, and
    // 64 MiB of its own), then the RGBA8 result and a copy for colour management: 24 bytes
    // a pixel, within the 32 the memory admission charges.
    let bound = MAX_PIXELS as usize * (16 + 4 + 4) + 64 * MIB + 2 * bytes.len();
    prop_assert!(peak <= bound, "{peak} bytes held, bound {bound}");
    // Cut inside the image's data (not only after it, where Pillow accepts a PNG without
    // its IEND too): must be refused, never filled in with grey.
    let truncated_only = !image.mutations.is_empty()
        && image
            .mutations
            .iter()
            .all(|m| matches!(m, Mutation::Truncate(_)))
        && bytes.len() < image.data_end;
    match decoded {
        Ok(decoded) => {
            let (w, h) = decoded.dimensions();
            prop_assert!(w >= 1 && h >= 1 && w as u64 * h as u64 <= MAX_PIXELS);
            prop_assert_eq!(decoded.as_raw().len(), w as usize * h as usize * 4);
            prop_assert!(
                !truncated_only,
                "{} cut to {} bytes was accepted as a {w}x{h} image",
                image.base,
                bytes.len()
            );
        }
        Err(Error::Decode(why) | Error::TooLarge(why)) => prop_assert!(!why.is_empty()),
        Err(Error::UnsupportedFormat(_)) => {}
        Err(other) => prop_assert!(false, "an untyped decode failure: {other:?}"),
    }
    Ok(())
}

/// Where an image's data ends: a PNG's last IDAT chunk (an APNG's later frames are not its
/// image), a JPEG's end-of-image marker, a WebP's RIFF container.
fn data_end(bytes: &[u8], format: Format) -> usize {
    match format {
        Format::Png => {
            let (mut at, mut end) = (8, bytes.len());
            while at + 8 <= bytes.len() {
                let length = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
                if &bytes[at + 4..at + 8] == b"IDAT" {
                    end = at + 12 + length;
                }
                at += 12 + length;
            }
            end
        }
        Format::Jpeg => bytes
            .windows(2)
            .rposition(|w| w == [0xff, 0xd9])
            .map_or(bytes.len(), |i| i + 2),
        Format::WebP | Format::Other => bytes.len(),
    }
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(cutout_tests::fixture(name)).unwrap()
}

fn small_photo() -> image::RgbaImage {
    let photo = image::load_from_memory(&fixture_bytes("images/chelsea.jpg")).unwrap();
    photo.thumbnail(96, 64).into_rgba8()
}

/// A two-frame animated PNG (APNG), 16-bit RGBA.
fn animated_png() -> Vec<u8> {
    let photo = small_photo();
    let (w, h) = photo.dimensions();
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Sixteen);
    encoder.set_animated(2, 0).unwrap();
    let mut writer = encoder.write_header().unwrap();
    let sixteen: Vec<u8> = photo.as_raw().iter().flat_map(|&v| [v, v]).collect();
    writer.write_image_data(&sixteen).unwrap();
    let inverted: Vec<u8> = sixteen.iter().map(|v| !v).collect();
    writer.write_image_data(&inverted).unwrap();
    writer.finish().unwrap();
    out
}

fn encoded(format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let photo = image::DynamicImage::ImageRgba8(small_photo());
    let photo = if format == image::ImageFormat::Jpeg {
        image::DynamicImage::ImageRgb8(photo.into_rgb8())
    } else {
        photo
    };
    photo.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn lossy_webp(alpha: bool) -> Vec<u8> {
    let mut photo = small_photo();
    if alpha {
        for (i, pixel) in photo.pixels_mut().enumerate() {
            pixel.0[3] = (i % 256) as u8;
        }
    }
    let (w, h) = photo.dimensions();
    webp::Encoder::from_rgba(photo.as_raw(), w, h)
        .encode(80.0)
        .to_vec()
}

/// A two-frame animated WebP (lossy frames with alpha, in ANMF chunks).
fn animated_webp() -> Vec<u8> {
    let photo = small_photo();
    let (w, h) = photo.dimensions();
    let inverted: Vec<u8> = photo.as_raw().iter().map(|v| !v).collect();
    let config = webp::WebPConfig::new().unwrap();
    let mut encoder = webp::AnimEncoder::new(w, h, &config);
    encoder.add_frame(webp::AnimFrame::from_rgba(photo.as_raw(), w, h, 0));
    encoder.add_frame(webp::AnimFrame::from_rgba(&inverted, w, h, 100));
    encoder.encode().to_vec()
}

fn decoder(target: &str, format: Format, bases: Vec<(&'static str, Vec<u8>)>) {
    for (name, bytes) in &bases {
        assert!(
            decode(bytes, DecodeLimits::default()).is_ok(),
            "the unmutated {name} must decode"
        );
    }
    let bases: Vec<(&'static str, std::sync::Arc<Vec<u8>>)> = bases
        .into_iter()
        .map(|(n, b)| (n, std::sync::Arc::new(b)))
        .collect();
    let strategy =
        (prop::sample::select(bases), mutations()).prop_map(move |((base, bytes), m)| {
            MutatedImage {
                base,
                data_end: data_end(&bytes, format),
                bytes: mutate(bytes.to_vec(), &m, format),
                mutations: m,
            }
        });
    fuzz(target, 300, strategy, check_decode);
}

#[test]
fn fuzz_jpeg_decoder() {
    decoder(
        "jpeg",
        Format::Jpeg,
        vec![
            ("chelsea.jpg", fixture_bytes("images/chelsea.jpg")),
            ("blocks-cmyk.jpg", fixture_bytes("decode/blocks-cmyk.jpg")),
            // Mutations mostly land in its 184 KiB press profile: moxcms parses it.
            (
                "blocks-cmyk-icc.jpg",
                fixture_bytes("decode/blocks-cmyk-icc.jpg"),
            ),
            ("blocks-exif6.jpg", fixture_bytes("decode/blocks-exif6.jpg")),
            ("small.jpg", encoded(image::ImageFormat::Jpeg)),
        ],
    );
}

#[test]
fn fuzz_png_decoder() {
    decoder(
        "png",
        Format::Png,
        vec![
            ("blocks-alpha.png", fixture_bytes("decode/blocks-alpha.png")),
            (
                "blocks-grey16.png",
                fixture_bytes("decode/blocks-grey16.png"),
            ),
            ("small.png", encoded(image::ImageFormat::Png)),
            ("animated16.png", animated_png()),
        ],
    );
}

#[test]
fn fuzz_webp_decoder() {
    decoder(
        "webp",
        Format::WebP,
        vec![
            ("blocks.webp", fixture_bytes("decode/blocks.webp")),
            ("lossless.webp", encoded(image::ImageFormat::WebP)),
            ("lossy.webp", lossy_webp(false)),
            ("lossy-alpha.webp", lossy_webp(true)),
            ("animated.webp", animated_webp()),
        ],
    );
}
