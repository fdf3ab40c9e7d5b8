#!/usr/bin/env bash
# The project's load benchmark: `rembg s` (rembg 2.0.86, u2netp on onnxruntime) and
# `cutout serve` (u2netp, refinement on) side by side on loopback, driven by the same load
# generator (wrk, Debian's, with benches/load.lua) over the same 14 photos
# (benches/photos.py), at 1, 8, 32 and 128 clients, each server in turn at each level; and
# cutout's /v2/edit with an e-commerce edit (white 1000x1000 canvas, 10 % padding, soft
# shadow) at the same levels. Prints images/s, p50/p95/p99 latency, responses by status,
# cutout's peak RSS so far, the ratios, and cutout's median time per stage at each level
# (benches/stages.py over its JSON request log). Past the queue (64) and the memory budget,
# cutout answers 503 with Retry-After: counted as non-200, never as a socket error.
#
# Usage: benches/load.sh [CUTOUT_BINARY [BASELINE_BINARY]]
#   BASELINE_BINARY: a second cutout build (e.g. the previous commit's) measured in the
#   same run. Environment: CLIENTS (default "1 8 32 128"), DURATION (seconds per server
#   and level, default 30, and at least 3 s per client up to 120 s, so that the many-client
#   levels run for a few latencies), REMBG_VENV (default ~/.cache/cutout-bench/rembg).
# rembg goes into a virtual environment of its own; wrk is installed with apt when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
cutout=${1:-${CARGO_TARGET_DIR:-target}/debug/cutout}
baseline=${2:-}
clients=${CLIENTS:-1 8 32 128}
duration=${DURATION:-30}
venv=${REMBG_VENV:-$HOME/.cache/cutout-bench/rembg}
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

if ! command -v wrk > /dev/null; then
    apt-get install -y -qq wrk > /dev/null
fi
if [ ! -x "$venv/bin/rembg" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "rembg[cli]==2.0.86" onnxruntime==1.31.1 scikit-image pillow
fi
"$venv/bin/python" benches/photos.py "$work/photos"
photos=("$work"/photos/*.jpg)
mkdir -p "$work/models" && cp models/u2netp.onnx "$work/models/"

wait_for() { # URL: until it answers at all
    for _ in $(seq 1500); do
        curl -s -o /dev/null "$1" && return 0
        sleep 0.2
    done
    echo "no answer from $1" >&2
    exit 1
}

U2NET_HOME="$work/models" "$venv/bin/rembg" s --host 127.0.0.1 --port 7171 --no-ui \
    --log_level warning > "$work/rembg.log" 2>&1 &
pids+=($!)
# cutout meters every request as deployed: a SQLite accounts store and a key (the admin key
# that the first start prints), so its ledger's cost is in the figures.
"$cutout" serve --log-format json --offline --addr 127.0.0.1:7172 \
    --store "sqlite://$work/cutout.db" --credits 10000000 --rate-limit 0 \
    > "$work/cutout.key" 2> "$work/cutout.log" &
pids+=($!)
cutout_pid=$!
servers=("rembg s|http://127.0.0.1:7171/api/remove|file|model=u2netp"
         "cutout|http://127.0.0.1:7172/v1/segment|image_file|-"
         "cutout edit|http://127.0.0.1:7172/v2/edit|imageFile|background.color=FFFFFF,outputSize=1000x1000,padding=0.1,shadow.mode=ai.soft")
if [ -n "$baseline" ]; then
    # A baseline with accounts serves unmetered (builds before them had no keys by default).
    open=()
    if "$baseline" serve --help | grep -q -- --no-auth; then open=(--no-auth); fi
    "$baseline" serve --offline --addr 127.0.0.1:7173 "${open[@]}" > "$work/baseline.log" 2>&1 &
    pids+=($!)
    servers+=("baseline|http://127.0.0.1:7173/v1/segment|image_file|-")
fi
wait_for http://127.0.0.1:7171/api
wait_for http://127.0.0.1:7172/health
CUTOUT_KEY=$(tail -n 1 "$work/cutout.key")
export CUTOUT_KEY
[ -z "$baseline" ] || wait_for http://127.0.0.1:7173/health

field() { sed -E "s/.* $1=([^ ]*).*/\1/" <<< "$2"; }

# run URL FIELD EXTRA CLIENTS SECONDS: one wrk run; prints its RESULT line, then waits
# until the requests wrk left unanswered at the end (sent at most one latency ago) are done.
run() {
    local threads=$(( $4 < 2 ? $4 : 2 ))
    local line
    line=$(wrk -t "$threads" -c "$4" -d "$5" --timeout 600s -s benches/load.lua "$1" -- \
        "$2" "$3" "${photos[@]}" | grep '^RESULT')
    echo "$line"
    sleep $(( $(field p99 "$line") / 1000 + 2 ))
}

echo "warming up: 10 s of one client per server"
for server in "${servers[@]}"; do
    IFS='|' read -r name url field extra <<< "$server"
    run "$url" "$field" "$extra" 1 10 > /dev/null
done

declare -A results
for c in $clients; do
    for server in "${servers[@]}"; do
        IFS='|' read -r name url field extra <<< "$server"
        logged=$(wc -l < "$work/cutout.log")
        seconds=$(( duration > 3 * c ? duration : 3 * c ))
        seconds=$(( seconds > 120 && duration <= 120 ? 120 : seconds ))
        line=$(run "$url" "$field" "$extra" "$c" "$seconds")
        if [ "${name%% *}" = cutout ]; then
            line="$line peak_rss_mib=$(( $(awk '/VmHWM/ { print $2 }' /proc/$cutout_pid/status) / 1024 ))"
        fi
        results["$name/$c"]=$line
        printf '%-11s %3d clients: %s\n' "$name" "$c" "${line#RESULT }"
        if [ "${name%% *}" = cutout ]; then
            tail -n +"$((logged + 1))" "$work/cutout.log" | python3 benches/stages.py
        fi
    done
done

# The CLI on the same photos, one at a time and warm (the model loaded once), after the
# servers' runs on the same machine: the reference for the server's latency at 1 client.
cli_line=$(CUTOUT_DEVICE=cpu "$cutout" remove --offline --timings --batch 1 "$work/photos" \
    --out-dir "$work/cli-out" 2>&1 | grep 'images in')
cli_ms=$(python3 -c 'import re, sys
count, amount, unit = re.search(r"(\d+) images in ([0-9.]+)(ms|s)", sys.argv[1]).groups()
print(round(float(amount) * (1 if unit == "ms" else 1000) / int(count)))' "$cli_line")
echo "cutout remove, same photos one at a time: $cli_ms ms an image ($cli_line)"
if [ -n "${results["cutout/1"]:-}" ]; then
    echo "cutout serve p50 at 1 client / the CLI's time an image: $(printf '%.2fx' \
        "$(echo "scale=4; $(field p50 "${results["cutout/1"]}") / $cli_ms" | bc)")"
fi

echo
echo "| clients | server | images/s | p50 ms | p95 ms | p99 ms | statuses | socket errors | cutout peak RSS MiB | throughput vs rembg | p50 vs rembg |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for c in $clients; do
    reference=${results["rembg s/$c"]}
    for server in "${servers[@]}"; do
        name=${server%%|*}
        line=${results["$name/$c"]}
        ips=$(field images_per_s "$line")
        p50=$(field p50 "$line")
        rss=-
        if grep -q peak_rss_mib <<< "$line"; then rss=$(field peak_rss_mib "$line"); fi
        ratio=-
        p50_ratio=-
        if [ "$name" != "cutout edit" ]; then # rembg has no edit to compare with
            ratio=$(printf '%.2fx' "$(echo "scale=4; $ips / $(field images_per_s "$reference")" | bc)")
            p50_ratio=$(printf '%.2fx' "$(echo "scale=4; $p50 / $(field p50 "$reference")" | bc)")
        fi
        echo "| $c | $name | $ips | $p50 | $(field p95 "$line") | $(field p99 "$line") | $(field statuses "$line") | $(field socket_errors "$line") | $rss | $ratio | $p50_ratio |"
    done
done
