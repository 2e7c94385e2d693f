#!/usr/bin/env bash
# The reads the dashboard's pages make, timed over a ledger of 100,000 jobs on the embedded
# default (`kiln serve`: SQLite, in-process dispatch, the demo generator). Seeds the jobs
# through the API (most succeed, some fail, some are canceled while queued), then times each
# page's requests with curl, 20 times each, and prints the median and the slowest.
#
#   bench/scripts/dashboard-reads.sh [path/to/kiln] [jobs]   (defaults: target/release/kiln, 100000)
set -euo pipefail
BIN=${1:-target/release/kiln}
JOBS=${2:-100000}
DIR=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$DIR"' EXIT
KILN_LOG=warn "$BIN" serve --listen 127.0.0.1:0 --data-dir "$DIR/data" >"$DIR/out" 2>"$DIR/err" &
PID=$!
until grep -q "listening on" "$DIR/out" 2>/dev/null; do sleep 0.1; done
BASE=$(sed -n 's/^kiln listening on //p' "$DIR/out")
KEY=$(cat "$DIR/data/api-key")

python3 - "$BASE" "$KEY" "$JOBS" <<'PY'
import concurrent.futures, http.client, json, sys, time, urllib.parse
base, key, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
host = urllib.parse.urlparse(base).netloc
def worker(n):
    conn = http.client.HTTPConnection(host)
    for i in range(n):
        # One job in 20 fails (fail_rate 1 with no retries left to save it).
        body = {"model": "demo/image", "input": {"prompt": f"job {i}", "width": 16, "height": 16,
                "seed": i, **({"fail_rate": 1.0} if i % 20 == 0 else {})}}
        while True:  # a 429 (the key's rate) is waited out and sent again: every job lands
            conn.request("POST", "/v1/jobs", json.dumps(body),
                         {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
            r = conn.getresponse(); r.read()
            if r.status != 429:
                break
            time.sleep(float(r.getheader("Retry-After") or 1))
        if r.status >= 300:
            raise SystemExit(f"submit answered {r.status}")
started = time.time()
with concurrent.futures.ThreadPoolExecutor(32) as pool:
    list(pool.map(worker, [total // 32] * 32))
print(f"submitted {total // 32 * 32} jobs in {time.time() - started:.0f} s", file=sys.stderr)
PY
# Wait for the backlog to drain: the reads are timed on a settled ledger.
until [ "$(curl -sf -H "Authorization: Bearer $KEY" "$BASE/v1/queue" | python3 -c 'import json,sys; print(sum(l["queued"]+l["running"] for l in json.load(sys.stdin)["lanes"]))')" = 0 ]; do sleep 2; done
ID=$(curl -sf -H "Authorization: Bearer $KEY" "$BASE/v1/jobs?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
NOW=$(date -u +%Y-%m-%dT%H:%M:%SZ)
FROM=$(date -u -d '30 days ago' +%Y-%m-%dT%H:%M:%SZ)
time_get() { # time_get LABEL PATH: 20 reads, median and slowest in ms
  local times=()
  for _ in $(seq 20); do
    times+=("$(curl -sf -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $KEY" "$BASE$2")")
  done
  printf '%s\n' "${times[@]}" | sort -n | awk -v label="$1" '{t[NR]=$1} END {printf "| %s | %.1f ms | %.1f ms |\n", label, t[int(NR/2)+1]*1000, t[NR]*1000}'
}
COUNT=$(curl -sf -H "Authorization: Bearer $KEY" "$BASE/v1/usage?from=$FROM&to=$NOW&group_by=day" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"]["jobs"])')
echo "| read (over $COUNT jobs) | median | slowest of 20 |"
echo "| --- | --- | --- |"
time_get "jobs list, first page (\`/v1/jobs?limit=25\`)" "/v1/jobs?limit=25"
time_get "jobs list, failed only" "/v1/jobs?limit=25&status=failed"
time_get "jobs list, by model and time" "/v1/jobs?limit=25&model=demo/image&created_after=$FROM"
time_get "queue per lane (\`/v1/queue\`)" "/v1/queue"
time_get "a job" "/v1/jobs/$ID"
time_get "its timeline" "/v1/jobs/$ID/transitions"
time_get "its deliveries" "/v1/jobs/$ID/deliveries"
time_get "models" "/v1/models"
time_get "usage per day split by model (30 days)" "/v1/usage?from=$FROM&to=$NOW&group_by=day&split=model"
time_get "usage by provider (30 days)" "/v1/usage?from=$FROM&to=$NOW&group_by=provider"
time_get "the dashboard's shell" "/ui/jobs"
time_get "its largest script" "/ui/assets/js/job.js"
