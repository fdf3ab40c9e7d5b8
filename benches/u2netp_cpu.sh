#!/usr/bin/env bash
# u2netp's forward at 320², batch 1, on this CPU: onnxruntime, then cutout on flex
# (criterion, `--bench remove`), then onnxruntime again, in one run, on the same weights
# (models/u2netp.onnx). onnxruntime comes from load.sh's rembg venv (or PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$HOME/.cache/cutout-bench/rembg/bin/python}
"$python" benches/u2netp_ort.py models/u2netp.onnx
cargo bench --workspace --profile dev --bench remove -- "forward.*batch/1$" \
    --warm-up-time 2 --measurement-time 8 2>&1 | grep -E "^u2netp|time:" | grep -v "%"
"$python" benches/u2netp_ort.py models/u2netp.onnx
