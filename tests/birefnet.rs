//! BiRefNet against PyTorch.
//!
//! The published weights are not in the repository, so the fixture is a BiRefNet built by
//! upstream's own code at small widths with seeded random weights (perturbed so that the
//! deformable offsets, batch norm, relative position bias and shifted-window mask all change
//! the output), and PyTorch's outputs for a photo (fixtures/make_birefnet_fixture.py). cutout
//! loads it through the real loader and must reproduce every backbone stage and the logits.

use std::path::Path;

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
/// logits with PyTorch's.
fn matches_pytorch(device: &Device) {
    let model = tiny_model(device);
    let mut reference =
        StateDict::open(&fixture("birefnet/birefnet-tiny.reference.safetensors")).unwrap();
    let shape = [1, 3, SIDE, SIDE];
    let input = reference.take("input", &shape).unwrap();
    let outputs = model.outputs(Tensor::from_data(TensorData::new(input, shape), device));

    let mut compared: Vec<(String, Tensor<4>)> = outputs
        .stages
        .into_iter()
        .enumerate()
        .map(|(i, stage)| (format!("stage{}", i + 1), stage))
        .collect();
    compared.push(("logits".into(), outputs.logits));
    for (name, ours) in compared {
        let expected_shape = reference.shape(&name).unwrap();
        assert_eq!(ours.dims().to_vec(), expected_shape, "{name}: shape");
        let expected = reference.take(&name, &expected_shape).unwrap();
        let ours = ours.into_data().try_into_vec::<f32>().unwrap();
        let err = max_abs_diff(&ours, &expected);
        let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        println!("{name}: max abs error {err:.2e} (values up to {scale:.2})");
        assert!(err <= TOLERANCE, "{name}: max abs error {err} vs PyTorch");
    }
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
    let error = match StateDict::from_safetensors_bytes("truncated.safetensors", truncated) {
        Err(error) => error,
        Ok(state) => BiRefNet::load(state, &Device::flex()).unwrap_err(),
    };
    println!("{error}");
    assert!(matches!(
        error,
        Error::InvalidModel(_) | Error::ModelTensor { .. }
    ));
}

#[test]
fn a_u2net_file_is_not_a_birefnet() {
    let u2netp = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/u2netp.onnx");
    let error = match StateDict::open(&u2netp) {
        Err(error) => error,
        Ok(state) => BiRefNet::load(state, &Device::flex()).unwrap_err(),
    };
    println!("{error}");
    assert!(matches!(
        error,
        Error::InvalidModel(_) | Error::ModelTensor { .. }
    ));
}
