#!/usr/bin/env python3
"""Load test for POST /v1/segment: N concurrent clients post the same JPEG for a fixed time;
prints images/s and p50/p99 latency for each N. Usage:
    benches/load_segment.py http://127.0.0.1:8080 photo.jpg 1 8 32
"""
import http.client
import statistics
import sys
import threading
import time
import urllib.parse
import uuid

DURATION = float(__import__("os").environ.get("DURATION", "30"))


def body_for(path):
    boundary = uuid.uuid4().hex
    data = open(path, "rb").read()
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image_file\"; filename=\"a.jpg\"\r\n"
        f"Content-Type: image/jpeg\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def client(url, body, content_type, deadline, latencies, statuses):
    parsed = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=600)
    while time.monotonic() < deadline:
        start = time.monotonic()
        conn.request("POST", "/v1/segment", body, {"Content-Type": content_type})
        response = conn.getresponse()
        response.read()
        statuses.append(response.status)
        if response.status == 200:
            latencies.append(time.monotonic() - start)


def run(url, path, clients):
    body, content_type = body_for(path)
    latencies, statuses = [], []
    start = time.monotonic()
    deadline = start + DURATION
    threads = [
        threading.Thread(target=client, args=(url, body, content_type, deadline, latencies, statuses))
        for _ in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")
    other = len(statuses) - len(latencies)
    print(
        f"clients {clients:>3}: {len(latencies) / elapsed:6.2f} images/s, "
        f"p50 {p(0.5) * 1000:7.0f} ms, p99 {p(0.99) * 1000:7.0f} ms, "
        f"{len(latencies)} ok, {other} not ok"
    )


if __name__ == "__main__":
    url, path, *counts = sys.argv[1:]
    for n in counts or ["1", "8", "32"]:
        run(url, path, int(n))
