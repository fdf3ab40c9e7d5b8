//! BiRefNet against PyTorch.
//!
//! The published weights are not in the repository, so the fixture is a BiRefNet built by
//! upstream's own code at small widths with seeded random weights (perturbed so that the
//! deformable offsets, batch norm, relative position bias and shifted-window mask all change
//! the output), and PyTorch's outputs for a photo (fixtures/make_birefnet_fixture.py). cutout
//! loads it through the real loader and must reproduce every backbone stage and the logits.

use std::path::Path;

use sha2::Digest;

use burn::tensor::{Device, Tensor, TensorData};
use cutout_core::error::{Error, TensorProblem};
use cutout_core::model::birefnet::BiRefNet;
use cutout_core::model::state_dict::StateDict;
use cutout_tests::*;

const SIDE: usize = 256;
const TOLERANCE: f32 = 1e-4;

fn tiny_model(device: &Device) -> BiRefNet {
    let state = StateDict::open(&fixture("birefnet/birefnet-tiny.safetensors")).unwrap();
    BiRefNet::load(state, device).unwrap()
}

/// Runs the fixture's input through the model on `device` and compares each stage and the
/// logits with PyTorch's, to `TOLERANCE`.
fn matches_pytorch(device: &Device) {
    let model = tiny_model(device);
    let mut reference =
        StateDict::open(&fixture("birefnet/birefnet-tiny.reference.safetensors")).unwrap();
    let outputs = run_on_reference_input(&model, &mut reference, SIDE, device);
    for (name, ours) in outputs {
        let (max, _) = error_against(&mut reference, &name, ours);
        assert!(max <= TOLERANCE, "{name}: max abs error {max} vs PyTorch");
    }
}

/// The backbone's stages and the logits for the reference's input, by reference name.
fn run_on_reference_input(
    model: &BiRefNet,
    reference: &mut StateDict,
    side: usize,
    device: &Device,
) -> Vec<(String, Vec<f32>)> {
    let shape = [1, 3, side, side];
    let input = reference.take("input", &shape).unwrap();
    let start = std::time::Instant::now();
    let outputs = model.outputs(Tensor::from_data(TensorData::new(input, shape), device));
    let mut named: Vec<(String, Tensor<4>)> = outputs
        .stages
        .into_iter()
        .enumerate()
        .map(|(i, stage)| (format!("stage{}", i + 1), stage))
        .collect();
    named.push(("logits".into(), outputs.logits));
    let named = named
        .into_iter()
        .map(|(name, t)| (name, t.into_data().try_into_vec::<f32>().unwrap()))
        .collect();
    println!("forward at {side}²: {:?}", start.elapsed());
    named
}

/// Max and mean abs difference of `ours` from the reference tensor `name`.
fn error_against(reference: &mut StateDict, name: &str, ours: Vec<f32>) -> (f32, f32) {
    let shape = reference.shape(name).unwrap();
    let expected = reference.take(name, &shape).unwrap();
    assert_eq!(ours.len(), expected.len(), "{name}: size");
    let (max, mean) = (
        max_abs_diff(&ours, &expected),
        mean_abs_diff(&ours, &expected),
    );
    let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    println!("{name}: max abs error {max:.2e}, mean {mean:.2e} (values up to {scale:.2})");
    (max, mean)
}

/// The real configurations (Swin-T for lite, Swin-L for general and the rest) at 1024² with
/// random weights: `make_birefnet_fixture.py --upstream UPSTREAM --full DIR --backbone
/// swin_v1_t` (and `swin_v1_l`), then
/// `CUTOUT_BIREFNET_FULL=DIR cargo test --workspace birefnet_full -- --ignored`.
///
/// The backbone's stages must match PyTorch to 1e-4. The logits are compared with the
/// network computed in float64: at real widths random weights amplify rounding through the
/// decoder's deformable sampling, so float32 results, PyTorch's included, stray from the
/// exact ones by up to ~0.1. cutout's may stray by at most `FULL_MARGIN` times PyTorch's, in
/// mean and in 99.9th percentile (`ErrorSpread`).
///
/// When the folder also holds the model's ONNX export (`benches/export_birefnet.py`, as
/// rembg's files are made), the same checks run on the weights read back from it.
fn full_configuration(file_stem: &str) {
    let dir = std::path::PathBuf::from(std::env::var("CUTOUT_BIREFNET_FULL").unwrap());
    let state = StateDict::open(&dir.join(format!("{file_stem}.safetensors"))).unwrap();
    full_configuration_matches(&dir, file_stem, state, &Device::flex());
    let onnx = dir.join(format!("{file_stem}.onnx"));
    if onnx.exists() {
        let bytes = std::fs::read(&onnx).unwrap();
        let state = StateDict::from_onnx(&onnx.display().to_string(), bytes).unwrap();
        full_configuration_matches(&dir, file_stem, state, &Device::flex());
    }
}

fn full_configuration_matches(dir: &Path, file_stem: &str, state: StateDict, device: &Device) {
    let device = device.clone();
    let start = std::time::Instant::now();
    let file = state.file().to_string();
    let model = BiRefNet::load(state, &device).unwrap();
    println!("{file}: loaded in {:?}", start.elapsed());
    let mut reference =
        StateDict::open(&dir.join(format!("{file_stem}.reference.safetensors"))).unwrap();
    let shape = reference.shape("logits_f64").unwrap();
    let exact = reference.take("logits_f64", &shape).unwrap();
    let pytorch = reference.take("logits", &shape).unwrap();
    let pytorch_error = ErrorSpread::of(&pytorch, &exact);
    println!("PyTorch float32 vs float64: {pytorch_error}");
    for (name, ours) in run_on_reference_input(&model, &mut reference, 1024, &device) {
        if name == "logits" {
            let ours = ErrorSpread::of(&ours, &exact);
            println!("cutout vs float64:          {ours}");
            assert!(
                ours.mean <= FULL_MARGIN * pytorch_error.mean,
                "logits: mean abs error {} vs float64",
                ours.mean
            );
            assert!(
                ours.p999 <= FULL_MARGIN * pytorch_error.p999,
                "logits: 99.9th percentile abs error {} vs float64",
                ours.p999
            );
        } else {
            let (max, _) = error_against(&mut reference, &name, ours);
            assert!(max <= TOLERANCE, "{name}: max abs error {max} vs PyTorch");
        }
    }
}

/// How far float32 logits are from the float64 ones. The few largest errors are pixels where
/// rounding moved a deformable sampling point across a pixel boundary: which pixels do
/// depends on the order of every sum, so the maximum measures luck (PyTorch's own and
/// cutout's maxima trade places from one random model to the next). The mean and the 99.9th
/// percentile measure the implementation.
struct ErrorSpread {
    mean: f32,
    p999: f32,
    max: f32,
}

impl ErrorSpread {
    fn of(values: &[f32], exact: &[f32]) -> Self {
        let mut errors: Vec<f32> = values
            .iter()
            .zip(exact)
            .map(|(v, e)| (v - e).abs())
            .collect();
        errors.sort_by(f32::total_cmp);
        Self {
            mean: errors.iter().sum::<f32>() / errors.len() as f32,
            p999: errors[errors.len() * 999 / 1000],
            max: errors[errors.len() - 1],
        }
    }
}

impl std::fmt::Display for ErrorSpread {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let Self { mean, p999, max } = self;
        write!(
            f,
            "mean {mean:.2e}, 99.9th percentile {p999:.2e}, max {max:.2e}"
        )
    }
}

const FULL_MARGIN: f32 = 4.0;

#[test]
#[ignore = "needs the full-size random-weight models (CUTOUT_BIREFNET_FULL)"]
fn birefnet_full_lite_matches_pytorch() {
    full_configuration("birefnet-swin_v1_t");
}

#[test]
#[ignore = "needs the full-size random-weight models (CUTOUT_BIREFNET_FULL)"]
fn birefnet_full_general_matches_pytorch() {
    full_configuration("birefnet-swin_v1_l");
}

/// The lite configuration on wgpu (lavapipe here, a few minutes): at 1024² its activations
/// are kept within the 128 MiB every WebGPU adapter binds (lavapipe binds no more).
#[test]
#[ignore = "needs the full-size random-weight models (CUTOUT_BIREFNET_FULL)"]
fn birefnet_full_lite_matches_pytorch_on_wgpu() {
    let dir = std::path::PathBuf::from(std::env::var("CUTOUT_BIREFNET_FULL").unwrap());
    let file_stem = "birefnet-swin_v1_t";
    let state = StateDict::open(&dir.join(format!("{file_stem}.safetensors"))).unwrap();
    full_configuration_matches(&dir, file_stem, state, &gpu().burn_device);
}

#[test]
fn tiny_birefnet_matches_pytorch_on_flex() {
    matches_pytorch(&Device::flex());
}

#[test]
fn tiny_birefnet_matches_pytorch_on_wgpu() {
    matches_pytorch(&gpu().burn_device);
}

// ---------------------------------------------------------------------------------------
// The ONNX export (rembg's format): the same fixture exported by upstream's notebook's recipe
// (benches/export_birefnet.py tiny --side 64), its state dict recovered from the graph.

fn tiny_onnx() -> StateDict {
    let bytes = std::fs::read(fixture("birefnet/birefnet-tiny.onnx")).unwrap();
    StateDict::from_onnx("birefnet-tiny.onnx", bytes).unwrap()
}

fn tiny_state_dict() -> StateDict {
    StateDict::open(&fixture("birefnet/birefnet-tiny.safetensors")).unwrap()
}

fn take_both(onnx: &mut StateDict, state: &mut StateDict, name: &str) -> (Vec<f32>, Vec<f32>) {
    let shape = state.shape(name).unwrap();
    (
        onnx.take(name, &shape).unwrap(),
        state.take(name, &shape).unwrap(),
    )
}

#[test]
fn an_onnx_export_gives_back_the_state_dict() {
    let (mut onnx, mut state) = (tiny_onnx(), tiny_state_dict());
    // Kept by name; transposed for MatMul (one per backbone stage); gathered by the index;
    // in a Sequential; a module the backbone's second pass calls again.
    for name in [
        "bb.patch_embed.proj.weight",
        "bb.layers.0.blocks.0.norm1.weight",
        "bb.layers.0.blocks.0.attn.qkv.weight",
        "bb.layers.1.blocks.1.mlp.fc2.weight",
        "bb.layers.2.downsample.reduction.weight",
        "bb.layers.3.blocks.1.attn.proj.weight",
        "bb.layers.0.blocks.1.attn.relative_position_bias_table",
        "bb.layers.3.blocks.0.attn.relative_position_bias_table",
        "decoder.conv_out1.0.weight",
    ] {
        let (recovered, saved) = take_both(&mut onnx, &mut state, name);
        assert_eq!(recovered, saved, "{name}");
    }
}

/// The exporter folds batch norm into the convolution before it: the recovered weights are
/// those of the folding formula on the state dict's (eps 1e-5, as upstream's BatchNorm2d).
#[test]
fn an_onnx_export_has_batch_norm_folded_into_the_convolution() {
    let (mut onnx, mut state) = (tiny_onnx(), tiny_state_dict());
    let (conv, bn) = (
        "decoder.decoder_block1.conv_in",
        "decoder.decoder_block1.bn_in",
    );
    let (folded, weight) = take_both(&mut onnx, &mut state, &format!("{conv}.weight"));
    let (folded_bias, bias) = take_both(&mut onnx, &mut state, &format!("{conv}.bias"));
    let out = bias.len();
    let bn_take =
        |state: &mut StateDict, what: &str| state.take(&format!("{bn}.{what}"), &[out]).unwrap();
    let gamma = bn_take(&mut state, "weight");
    let beta = bn_take(&mut state, "bias");
    let mean = bn_take(&mut state, "running_mean");
    let var = bn_take(&mut state, "running_var");
    assert!(!onnx.contains(&format!("{bn}.weight")));
    let per_output = weight.len() / out;
    for o in 0..out {
        let scale = gamma[o] as f64 / (var[o] as f64 + 1e-5).sqrt();
        let expected_bias = (bias[o] as f64 - mean[o] as f64) * scale + beta[o] as f64;
        assert!(
            (folded_bias[o] as f64 - expected_bias).abs() < 1e-5,
            "bias {o}"
        );
        for i in o * per_output..(o + 1) * per_output {
            let expected = weight[i] as f64 * scale;
            assert!((folded[i] as f64 - expected).abs() < 1e-5, "weight {i}");
        }
    }
}

#[test]
fn a_tiny_birefnet_from_onnx_matches_pytorch() {
    let device = Device::flex();
    let model = BiRefNet::load(tiny_onnx(), &device).unwrap();
    let mut reference =
        StateDict::open(&fixture("birefnet/birefnet-tiny.reference.safetensors")).unwrap();
    for (name, ours) in run_on_reference_input(&model, &mut reference, SIDE, &device) {
        let (max, _) = error_against(&mut reference, &name, ours);
        assert!(max <= TOLERANCE, "{name}: max abs error {max} vs PyTorch");
    }
}

#[test]
fn an_onnx_file_of_the_users_own_is_recognised_as_birefnet() {
    let bytes = std::fs::read(fixture("birefnet/birefnet-tiny.onnx")).unwrap();
    let session = cutout_core::model::Session::from_custom_onnx(bytes, &Device::flex()).unwrap();
    assert_eq!(session.spec.name, "birefnet_custom");
    assert_eq!(session.spec.input_size, 1024);
}

#[test]
fn a_truncated_onnx_file_is_an_error() {
    let bytes = std::fs::read(fixture("birefnet/birefnet-tiny.onnx")).unwrap();
    let truncated = bytes[..bytes.len() / 2].to_vec();
    let error = read_or_load_error(StateDict::from_onnx("truncated.onnx", truncated));
    assert!(matches!(error, Error::InvalidModel(_)), "{error:?}");
}

#[test]
fn a_u2net_onnx_file_is_not_a_birefnet() {
    let u2netp = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/u2netp.onnx");
    let state = StateDict::from_onnx("u2netp.onnx", std::fs::read(u2netp).unwrap());
    let (tensor, problem) = problem_of(read_or_load_error(state));
    assert_eq!(problem, TensorProblem::Missing, "{tensor}");
}

/// rembg publishes an md5 for its BiRefNet exports: a file that does not match is refused and
/// removed, without being read as a model.
#[test]
fn a_downloaded_onnx_birefnet_must_match_rembgs_md5() {
    let spec = cutout_core::model::spec("birefnet-lite").unwrap();
    assert!(spec.file.ends_with(".onnx") && !spec.md5.is_empty());
    let dir = download_dir("md5");
    let url = serve_once(std::fs::read(fixture("birefnet/birefnet-tiny.onnx")).unwrap());
    let error = cutout_core::model::fetch_into(spec, &url, &dir, None, &mut |_, _| {}).unwrap_err();
    println!("{error}");
    assert!(
        matches!(error, Error::ChecksumMismatch { kind: "md5", .. }),
        "{error:?}"
    );
    assert!(!dir.join(spec.file).exists());
    assert!(!dir.join(format!("{}.partial", spec.file)).exists());
}

/// The fixture's bytes with its safetensors header rewritten by `edit`.
fn with_header(edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> Vec<u8> {
    let bytes = std::fs::read(fixture("birefnet/birefnet-tiny.safetensors")).unwrap();
    let length = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + length]).unwrap();
    edit(&mut header);
    let mut json = serde_json::to_vec(&header).unwrap();
    // safetensors pads the header with spaces to a multiple of 8 bytes
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend(&bytes[8 + length..]);
    out
}

fn load_error(bytes: Vec<u8>) -> Error {
    let state = StateDict::from_safetensors_bytes("edited.safetensors", bytes).unwrap();
    BiRefNet::load(state, &Device::flex()).unwrap_err()
}

/// The error of reading a file (`state`) or of building a BiRefNet from what was read.
fn read_or_load_error(state: Result<StateDict, Error>) -> Error {
    let error = match state {
        Err(error) => error,
        Ok(state) => BiRefNet::load(state, &Device::flex()).unwrap_err(),
    };
    println!("{error}");
    error
}

fn problem_of(error: Error) -> (String, TensorProblem) {
    println!("{error}");
    match error {
        Error::ModelTensor {
            tensor, problem, ..
        } => (tensor, problem),
        other => panic!("expected a tensor error, got {other:?}"),
    }
}

#[test]
fn a_missing_tensor_is_named() {
    let name = "decoder.lateral_block3.conv.bias";
    let bytes = with_header(|header| {
        let entry = header.remove(name).unwrap();
        header.insert("decoder.lateral_block3.conv.bias_renamed".into(), entry);
    });
    assert_eq!(
        problem_of(load_error(bytes)),
        (name.to_string(), TensorProblem::Missing)
    );
}

#[test]
fn a_misshapen_tensor_is_named() {
    // Same element count, transposed: only the shape check can catch it.
    let name = "bb.layers.1.blocks.1.mlp.fc2.weight";
    let bytes = with_header(|header| {
        let shape = header[name]["shape"].as_array_mut().unwrap();
        shape.reverse();
    });
    let (tensor, problem) = problem_of(load_error(bytes));
    assert_eq!(tensor, name);
    assert!(
        matches!(problem, TensorProblem::Shape { .. }),
        "{problem:?}"
    );
}

#[test]
fn an_extra_tensor_is_named() {
    let bytes = with_header(|header| {
        let end = header["decoder.conv_out1.0.bias"]["data_offsets"][1].clone();
        let extra = serde_json::json!({"dtype": "F32", "shape": [0], "data_offsets": [end, end]});
        header.insert("decoder.extra_head.weight".into(), extra);
    });
    assert_eq!(
        problem_of(load_error(bytes)),
        (
            "decoder.extra_head.weight".to_string(),
            TensorProblem::Unexpected
        )
    );
}

#[test]
fn a_truncated_file_is_an_error() {
    let bytes = std::fs::read(fixture("birefnet/birefnet-tiny.safetensors")).unwrap();
    let truncated = bytes[..bytes.len() / 2].to_vec();
    let error = read_or_load_error(StateDict::from_safetensors_bytes(
        "truncated.safetensors",
        truncated,
    ));
    assert!(matches!(
        error,
        Error::InvalidModel(_) | Error::ModelTensor { .. }
    ));
}

#[test]
fn a_u2net_file_is_not_a_birefnet() {
    let u2netp = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/u2netp.onnx");
    let error = read_or_load_error(StateDict::open(&u2netp));
    assert!(matches!(
        error,
        Error::InvalidModel(_) | Error::ModelTensor { .. }
    ));
}

/// Serves `body` once over loopback HTTP; returns the URL.
fn serve_once(body: Vec<u8>) -> String {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/model.safetensors",
        listener.local_addr().unwrap()
    );
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 2 {
            line.clear();
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&body).unwrap();
    });
    url
}

fn download_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cutout-birefnet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn a_downloaded_birefnet_is_checked_by_loading_it() {
    // Published on the hub without a checksum.
    let spec = cutout_core::model::spec("birefnet-matting").unwrap();
    let bytes = std::fs::read(fixture("birefnet/birefnet-tiny.safetensors")).unwrap();
    let dir = download_dir("good");
    let url = serve_once(bytes.clone());
    let (path, fetched) =
        cutout_core::model::fetch_into(spec, &url, &dir, None, &mut |_, _| {}).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    // sha256 of the fixture, as `sha256sum` prints it
    let expected = cutout_core::model::download::hex(&sha2::Sha256::digest(&bytes));
    assert_eq!(fetched.sha256, expected);
}

#[test]
fn a_downloaded_file_of_another_architecture_is_removed() {
    let spec = cutout_core::model::spec("birefnet-matting").unwrap();
    let u2netp = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/u2netp.onnx"));
    let dir = download_dir("wrong");
    let url = serve_once(u2netp.unwrap());
    let error = cutout_core::model::fetch_into(spec, &url, &dir, None, &mut |_, _| {}).unwrap_err();
    println!("{error}");
    assert!(
        matches!(error, Error::InvalidModel(_) | Error::ModelTensor { .. }),
        "{error:?}"
    );
    assert!(!dir.join(spec.file).exists());
    assert!(!dir.join(format!("{}.partial", spec.file)).exists());
}
