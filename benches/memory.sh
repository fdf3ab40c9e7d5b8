#!/usr/bin/env bash
# Peak memory of `cutout serve` while CLIENTS clients each upload one large JPEG in a loop
# for DURATION seconds (the reliability issue's bar: under 2.5 GiB on the CPU path with the
# default --max-inflight-memory, whatever the number of clients). Prints the statuses seen,
# the peak RSS (VmHWM) and the largest memory claim /health reported.
#   benches/memory.sh [CUTOUT]    (env: CLIENTS=32 DURATION=60 MEGAPIXELS=24 PORT=18790)
set -euo pipefail
cd "$(dirname "$0")/.."
CUTOUT=${1:-${CARGO_TARGET_DIR:-target}/debug/cutout}
CLIENTS=${CLIENTS:-32}
DURATION=${DURATION:-60}
MEGAPIXELS=${MEGAPIXELS:-24}
PORT=${PORT:-18790}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

width=$(python3 -c "print(int(($MEGAPIXELS * 1e6 * 1.5) ** 0.5))")
height=$(python3 -c "print(int($MEGAPIXELS * 1e6 / $width))")
# The photo enlarged by cutout itself (no ImageMagick needed): background kept, filled.
"$CUTOUT" edit tests/fixtures/images/astronaut.jpg -o "$WORK/big.jpg" --offline \
    --set removeBackground=false --set "outputSize=${width}x${height}" --set scaling=fill
echo "photo: ${width}x${height}, $(stat -c %s "$WORK/big.jpg") bytes; $CLIENTS clients for ${DURATION}s"

XDG_DATA_HOME="$WORK" "$CUTOUT" serve --offline --no-auth --addr "127.0.0.1:$PORT" 2>"$WORK/log" &
server=$!
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do sleep 0.2; done
echo "idle RSS: $(grep VmRSS /proc/$server/status)"

end=$((SECONDS + DURATION))
for i in $(seq "$CLIENTS"); do
    (while [ $SECONDS -lt $end ]; do
        curl -s -o /dev/null -w "%{http_code}\n" -F "image_file=@$WORK/big.jpg" \
            "http://127.0.0.1:$PORT/v1/segment" >>"$WORK/status.$i" || echo 000 >>"$WORK/status.$i"
    done) &
done
peak_claim=0
health_failures=0
while [ $SECONDS -lt $end ]; do
    if claim=$(curl -s --max-time 5 "http://127.0.0.1:$PORT/health" | python3 -c "import json,sys; print(json.load(sys.stdin)['memory']['in_flight_bytes'])"); then
        [ "$claim" -gt "$peak_claim" ] && peak_claim=$claim
    else
        health_failures=$((health_failures + 1))
    fi
    sleep 1
done
wait $(jobs -p | grep -v "^$server$") 2>/dev/null || true
echo "statuses: $(cat "$WORK"/status.* | sort | uniq -c | tr '\n' ' ')"
echo "peak RSS: $(grep VmHWM /proc/$server/status)"
echo "largest claim seen on /health: $((peak_claim >> 20)) MiB; /health failures: $health_failures"
