#!/usr/bin/env bash
# Dispatch latency of lone jobs: starts Kiln as ../shared/bench-peer/kiln/run.sh does (the same
# fake upstream, the same configuration), then submits N jobs one at a time, each waited for with
# `Prefer: wait` before the next, and prints p50 and p99 of `started_at - created_at` (committed to
# claimed, millisecond resolution). Run compare.sh once first: it makes the peer's copy used here.
# Usage: KILN_BIN=target/release/kiln bench/lone-dispatch.sh [N=200] 1 100 [WORKERS: 0 = embedded]
set -eu
# Runs from the peer's copy that compare.sh makes (it needs the fake upstream and receiver there).
cd "${XDG_CACHE_HOME:-$HOME/.cache}/kiln-bench-peer/kiln"
N=${1:-200}; C=${2:-1}; WC=${3:-100}; W=${4:-1}
BIN=${KILN_BIN:?set KILN_BIN to the kiln release binary}; unset KILN_BIN  # Kiln refuses unknown KILN_* variables
PG=${PEER_PG:-postgres://postgres@127.0.0.1:5432}
tmp=$(mktemp -d); pids=(); db=kiln_peer_$$
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; psql "$PG/postgres" -qAtc "drop database if exists $db" >/dev/null 2>&1; rm -rf "$tmp"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RP=$(port); AP=$(port); UP=$(port); WP=$(port)
[[ $W == 0 ]] || psql "$PG/postgres" -qAtc "create database $db" >/dev/null
if [[ $W != 0 ]]; then
  redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync everysec --dir "$tmp" --maxmemory-policy noeviction --daemonize no >"$tmp/redis.log" 2>&1 & pids+=($!)
fi
node upstream-openai.js "$UP" & pids+=($!)
node ../bullmq/receiver.js "$WP" "$N" >"$tmp/recv.out" & pids+=($!)
cat >"$tmp/kiln.toml" <<TOML
${KILN_EXTRA_TOML:-}
[[providers]]
name = "fake"
kind = "openai"
base_url = "http://127.0.0.1:$UP/v1"

[[models]]
name = "bench/image"
routes = [{ provider = "fake", model = "img-1" }]

[worker]
concurrency = $WC

[ssrf]
loopback_webhooks = true
TOML
export KILN_STORAGE_URL="file://$tmp/out" KILN_LOG=warn
[[ $W == 0 ]] || export KILN_DATABASE_URL="$PG/$db" KILN_REDIS_URL="redis://127.0.0.1:$RP"
mkdir -p "$tmp/data" "$tmp/out"
cd "$tmp"
KEY=$("$BIN" keys create --create-ledger --tenant bench --data-dir "$tmp/data" --config "$tmp/kiln.toml" 2>"$tmp/keys.log" | tail -1)
if [[ $W == 0 ]]; then
  "$BIN" serve --listen "127.0.0.1:$AP" --data-dir "$tmp/data" --config "$tmp/kiln.toml" >"$tmp/api.log" 2>&1 & pids+=($!)
else
  "$BIN" api --listen "127.0.0.1:$AP" --data-dir "$tmp/data" --config "$tmp/kiln.toml" >"$tmp/api.log" 2>&1 & pids+=($!)
fi
for i in $(seq 1 "$W"); do "$BIN" worker --data-dir "$tmp/data" --config "$tmp/kiln.toml" >"$tmp/worker$i.log" 2>&1 & pids+=($!); done
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$AP/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$AP/healthz" >/dev/null || { echo "api did not start:"; cat "$tmp/api.log" "$tmp/keys.log" | tail -n 8; exit 1; }
sleep 1
python3 - "http://127.0.0.1:$AP" "$KEY" "$N" <<'PY'
import json, sys, time, urllib.request, statistics, datetime
base, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def call(method, path, body=None, headers={}):
    req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body else None,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json", **headers})
    return json.load(urllib.request.urlopen(req))
t = lambda s: datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1000
lat = []
for i in range(n):
    job = call("POST", "/v1/jobs", {"model": "bench/image", "input": {"prompt": f"lone {i}", "width": 32, "height": 32}})
    done = call("GET", f"/v1/jobs/{job['id']}", headers={"prefer": "wait=10"})
    lat.append(t(done["started_at"]) - t(done["created_at"]))
lat.sort()
print(json.dumps({"jobs": n, "dispatch_p50_ms": lat[len(lat)//2], "dispatch_p99_ms": lat[int(len(lat)*0.99)-1], "max_ms": lat[-1]}))
PY
