#!/usr/bin/env python3
"""Median time per stage over the `cutout serve` debug lines of successful requests
(`RUST_LOG=cutout_server=debug`), read from standard input. Usage:
    benches/stages.py < serve.log"""
import re
import statistics
import sys

STAGES = ["read_body", "decode", "queue_wait", "preprocess", "forward", "effects",
          "readback", "encode", "total"]
samples = {stage: [] for stage in STAGES}
requests = 0
for line in sys.stdin:
    if not re.search(r" (POST|GET) \S+ 200: ", line):
        continue
    requests += 1
    found = dict(re.findall(r"(\w+)=([\d.]+)ms", line))
    for stage in STAGES:
        samples[stage].append(float(found.get(stage, 0.0)))
if requests:
    print(f"median ms over {requests} requests: " + ", ".join(
        f"{stage} {statistics.median(samples[stage]):.0f}" for stage in STAGES))
