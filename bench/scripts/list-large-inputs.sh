#!/usr/bin/env bash
# Lists 100 jobs whose inputs are 8 MB each (inline data: URIs) on a `kiln api` over the
# embedded SQLite ledger, and reports each list's latency and the process's peak RSS growth
# over the lists. No worker runs, so the jobs stay queued with their inputs, as a backlog would.
#
#   bench/scripts/list-large-inputs.sh [path/to/kiln]     (default: target/release/kiln)
set -euo pipefail
BIN=${1:-target/release/kiln}
DIR=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$DIR"' EXIT
KILN_LOG=warn "$BIN" api --listen 127.0.0.1:0 --data-dir "$DIR/data" >"$DIR/out" 2>"$DIR/err" &
PID=$!
until grep -q "listening on" "$DIR/out" 2>/dev/null; do sleep 0.1; done
BASE=$(sed -n 's/^kiln listening on //p' "$DIR/out")
KEY=$(KILN_LOG=warn "$BIN" keys create --tenant bench --data-dir "$DIR/data")
python3 - "$DIR/body.json" <<'PY'
import base64, json, sys
image = b"\x89PNG\r\n\x1a\n" + bytes(6_000_000 - 8)
uri = "data:image/png;base64," + base64.b64encode(image).decode()
json.dump({"model": "demo/upscale", "input": {"image": uri, "scale": 2}}, open(sys.argv[1], "w"))
PY
for _ in $(seq 100); do
  curl -sf -o /dev/null -H "Authorization: Bearer $KEY" -H 'content-type: application/json' \
    --data-binary @"$DIR/body.json" "$BASE/v1/jobs"
done
echo 5 > "/proc/$PID/clear_refs"
BEFORE=$(awk '/^VmRSS/ {print $2}' "/proc/$PID/status")
TIMES=()
for _ in $(seq 20); do
  TIMES+=("$(curl -sf -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $KEY" "$BASE/v1/jobs?limit=100")")
done
PEAK=$(awk '/^VmHWM/ {print $2}' "/proc/$PID/status")
printf '%s\n' "${TIMES[@]}" | sort -n | awk '{t[NR]=$1} END {printf "GET /v1/jobs?limit=100 over 100 jobs of 8 MB: p50 %.1f ms, max %.1f ms (20 lists)\n", t[int(NR/2)+1]*1000, t[NR]*1000}'
echo "peak RSS growth over the lists: $(( (PEAK - BEFORE) / 1024 )) MiB (RSS before: $(( BEFORE / 1024 )) MiB)"
