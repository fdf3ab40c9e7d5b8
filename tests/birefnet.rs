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
/// exact ones by up to ~0.05. cutout's may stray by at most `FULL_MARGIN` times PyTorch's.
fn full_configuration(file_stem: &str) {
    let dir = std::path::PathBuf::from(std::env::var("CUTOUT_BIREFNET_FULL").unwrap());
    let device = Device::flex();
    let start = std::time::Instant::now();
    let state = StateDict::open(&dir.join(format!("{file_stem}.safetensors"))).unwrap();
    let model = BiRefNet::load(state, &device).unwrap();
    println!("{file_stem}: loaded in {:?}", start.elapsed());
    let mut reference =
        StateDict::open(&dir.join(format!("{file_stem}.reference.safetensors"))).unwrap();
    let pytorch = reference.take("pytorch_f32_error", &[2]).unwrap();
    println!(
        "PyTorch float32 vs float64: max {:.2e}, mean {:.2e}",
        pytorch[0], pytorch[1]
    );
    for (name, ours) in run_on_reference_input(&model, &mut reference, 1024, &device) {
        if name == "logits" {
            error_against(&mut reference, "logits", ours.clone());
            let (max, mean) = error_against(&mut reference, "logits_f64", ours);
            assert!(
                max <= FULL_MARGIN * pytorch[0],
                "logits: max abs error {max} vs float64"
            );
            assert!(
                mean <= FULL_MARGIN * pytorch[1],
                "logits: mean abs error {mean} vs float64"
            );
        } else {
            let (max, _) = error_against(&mut reference, &name, ours);
            assert!(max <= TOLERANCE, "{name}: max abs error {max} vs PyTorch");
        }
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

#[test]
fn tiny_birefnet_matches_pytorch_on_flex() {
    matches_pytorch(&Device::flex());
}

#[test]
fn tiny_birefnet_matches_pytorch_on_wgpu() {
    matches_pytorch(&gpu().burn_device);
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
    let spec = cutout_core::model::spec("birefnet-lite").unwrap();
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
    let spec = cutout_core::model::spec("birefnet-lite").unwrap();
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
