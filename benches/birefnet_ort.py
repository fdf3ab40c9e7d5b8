#!/usr/bin/env python3
"""onnxruntime's forward on the ONNX export of a random-weight BiRefNet (export_birefnet.py),
median of warm runs, for benches/birefnet_cpu.sh.
Usage: birefnet_ort.py MODEL.onnx REFERENCE.safetensors [RUNS]"""
import statistics
import sys
import time

import onnxruntime as ort
from safetensors.numpy import load_file

model, reference = sys.argv[1], sys.argv[2]
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
options = ort.SessionOptions()
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
ref = load_file(reference)
x = ref["input"]
(logits,) = session.run(None, {"input_image": x})
print(f"onnxruntime vs PyTorch logits: max abs difference {abs(logits - ref['logits']).max():.2e}")
times = []
for _ in range(runs):
    start = time.perf_counter()
    session.run(None, {"input_image": x})
    times.append(time.perf_counter() - start)
print(f"onnxruntime {ort.__version__}: median {statistics.median(times):.2f} s over {runs} warm runs")
