#!/usr/bin/env python3
"""onnxruntime's u2netp forward at 320², batch 1, the same constant input as
`--bench remove`: median of warm runs, for benches/u2netp_cpu.sh.
Usage: u2netp_ort.py MODEL.onnx [RUNS]"""
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

model = sys.argv[1]
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 15
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
x = np.full((1, 3, 320, 320), 0.1, np.float32)
for _ in range(3):
    session.run(None, {name: x})
times = []
for _ in range(runs):
    start = time.perf_counter()
    session.run(None, {name: x})
    times.append(time.perf_counter() - start)
print(f"onnxruntime {ort.__version__} u2netp forward: median {statistics.median(times) * 1000:.1f} ms over {runs} warm runs")
