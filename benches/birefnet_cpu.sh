#!/usr/bin/env bash
# BiRefNet's forward at 1024² on this CPU: cutout (flex) beside onnxruntime on the same
# random weights, in one run. Prepare once (PyTorch, several GB, in a venv of your own):
#   python tests/fixtures/make_birefnet_fixture.py --upstream CHECKOUT --full DIR --backbone swin_v1_t
#   python benches/export_birefnet.py --upstream CHECKOUT DIR swin_v1_t     (and swin_v1_l)
# then: PYTHON=VENV/bin/python benches/birefnet_cpu.sh DIR
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: birefnet_cpu.sh DIR}
python=${PYTHON:-python3}
for stem in birefnet-swin_v1_t birefnet-swin_v1_l; do
    [ -f "$dir/$stem.onnx" ] || continue
    echo "== $stem"
    "$python" benches/birefnet_ort.py "$dir/$stem.onnx" "$dir/$stem.reference.safetensors" 3
done
CUTOUT_BIREFNET_FULL=$dir cargo bench --workspace --profile dev --bench birefnet -- --quick
