#!/usr/bin/env python3
"""Exports a random-weight BiRefNet of make_birefnet_fixture.py --full to ONNX the way rembg's
BiRefNet files were made (upstream's tutorials/BiRefNet_pth2onnx.ipynb: the modulated
deformable convolutions decomposed into gathers by deform_conv2d_onnx_exporter, opset 17),
for the side-by-side CPU bench (benches/birefnet_cpu.sh).

Needs the fixture script's venv plus: pip install onnx onnxscript onnxruntime
deform_conv2d_onnx_exporter
Usage: export_birefnet.py --upstream BIREFNET_CHECKOUT DIR swin_v1_t|swin_v1_l
"""
import argparse
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures"))
import make_birefnet_fixture as fixture  # noqa: E402


def patch_exporter():
    """The two fixes upstream's notebook applies to deform_conv2d_onnx_exporter for recent
    PyTorch: sizes the tracer leaves symbolic are read from the contiguous tensor's strides,
    and scalar types are mapped to ONNX types through their own method."""
    import deform_conv2d_onnx_exporter as exporter

    size_of = exporter.get_tensor_dim_size

    def get_tensor_dim_size(tensor, dim):
        size = size_of(tensor, dim)
        if size is None:
            strides = tensor.type().strides()
            size = {3: strides[2], 2: strides[1] // strides[2], 0: strides[3]}.get(dim)
        return size

    class OnnxTypes(dict):
        def __getitem__(self, key):
            return key.onnx_type() if hasattr(key, "onnx_type") else dict.__getitem__(self, key)

    exporter.get_tensor_dim_size = get_tensor_dim_size
    exporter.sym_help.cast_pytorch_to_onnx = OnnxTypes(
        getattr(exporter.sym_help, "cast_pytorch_to_onnx", {}))
    exporter.register_deform_conv2d_onnx_op()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    parser.add_argument("dir")
    parser.add_argument("backbone", choices=["tiny", "swin_v1_t", "swin_v1_l"])
    parser.add_argument("--side", type=int,
                        help="trace at this input size instead of the reference input's (the "
                             "weights are the same; the graph's constants shrink with it)")
    args = parser.parse_args()
    out = os.path.abspath(args.dir)
    stem = os.path.join(out, f"birefnet-{args.backbone}")
    model = fixture.build(os.path.abspath(args.upstream), args.backbone)
    model.load_state_dict(load_file(f"{stem}.safetensors"))
    x = load_file(f"{stem}.reference.safetensors")["input"]
    if args.side:
        x = torch.nn.functional.interpolate(x, size=(args.side, args.side), mode="bilinear")
    patch_exporter()
    # As upstream's notebook exports it (and so rembg's files): the model itself, whose
    # eval-mode forward returns the last prediction alone, under the notebook's names.
    torch.onnx.export(model, x, f"{stem}.onnx", opset_version=17, dynamo=False,
                      input_names=["input_image"], output_names=["output_image"])
    print(f"wrote {stem}.onnx")


if __name__ == "__main__":
    main()
