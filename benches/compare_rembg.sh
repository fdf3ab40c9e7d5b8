#!/usr/bin/env bash
# Side by side on one folder: `rembg p -m u2netp` (onnxruntime, CPU) vs `cutout remove`.
# Needs: pip install "rembg[cli]==2.0.86" onnxruntime==1.31.1 scikit-image pillow
# Usage: benches/compare_rembg.sh [CUTOUT_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
cutout=${1:-${CARGO_TARGET_DIR:-target}/debug/cutout}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

benches/photos.py "$work/in"
ls "$work/in" | wc -l | xargs echo "photos:"

mkdir -p "$work/models" && cp models/u2netp.onnx "$work/models/"
time_it() { local start=$(date +%s.%N); "$@" > /dev/null 2>&1; echo "$(date +%s.%N) - $start" | bc; }
rembg_s=$(U2NET_HOME="$work/models" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} time_it rembg p -m u2netp "$work/in" "$work/rembg")
cutout_s=$(time_it "$cutout" remove --offline --out-dir "$work/cutout" "$work/in")
echo "rembg p -m u2netp: ${rembg_s}s"
echo "cutout remove:     ${cutout_s}s"
echo "ratio (cutout time / rembg time): $(echo "scale=2; $cutout_s / $rembg_s" | bc)"
"$cutout" remove --offline --timings --out-dir "$work/cutout2" "$work/in" 2>&1 | grep images
