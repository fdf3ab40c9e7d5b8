#!/usr/bin/env python3
"""Median time per stage over the request lines of `cutout serve --log-format json`
(target `cutout::request`) of successful requests, read from standard input. Usage:
    benches/stages.py < serve.log"""
import json
import statistics
import sys

STAGES = ["admission", "read_body", "decode", "queue_wait", "preprocess", "forward", "effects",
          "readback", "encode", "total"]
samples = {stage: [] for stage in STAGES}
requests = 0
for line in sys.stdin:
    try:
        event = json.loads(line)
    except ValueError:
        continue
    if event.get("target") != "cutout::request" or event.get("status") != 200:
        continue
    if "forward_ms" not in event:
        continue  # not an image: health checks, metrics, accounts
    requests += 1
    for stage in STAGES:
        samples[stage].append(float(event[f"{stage}_ms"]))
if requests:
    print(f"median ms over {requests} requests: " + ", ".join(
        f"{stage} {statistics.median(samples[stage]):.0f}" for stage in STAGES))
