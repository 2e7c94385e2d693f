#!/usr/bin/env bash
# Times demo/video encodes on a release binary (BENCHMARKS.md, "Issue 19"): mp4 at 512 and 1024
# pixels a side, gif at 512; 10 s at 30 fps. Usage: bench/video.sh target/release/kiln
set -eu
BIN=$1; dir=$(mktemp -d); port=47311
$BIN serve --listen 127.0.0.1:$port --data-dir $dir >$dir/log 2>&1 & pid=$!
trap 'kill $pid; rm -rf $dir' EXIT
sleep 1
KEY=$($BIN keys create --create-ledger --tenant acme --data-dir $dir 2>/dev/null | tail -1)
api() { curl -s -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$@"; }
wait_job() { while :; do j=$(api http://127.0.0.1:$port/v1/jobs/$1); s=$(echo "$j" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])'); [[ $s == succeeded || $s == failed ]] && { echo "$j"; return; }; sleep 0.2; done; }
for side in 512 1024; do
  img=$(api -X POST http://127.0.0.1:$port/v1/jobs -d "{\"model\":\"demo/image\",\"input\":{\"prompt\":\"a kiln\",\"width\":$side,\"height\":$side}}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  wait_job $img >/dev/null
  for fmt in mp4 gif; do
    [[ $fmt == gif && $side == 1024 ]] && continue
    v=$(api -X POST http://127.0.0.1:$port/v1/jobs -d "{\"model\":\"demo/video\",\"input\":{\"image\":\"kiln://jobs/$img/outputs/0\",\"seconds\":10,\"fps\":30,\"format\":\"$fmt\"}}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    wait_job $v | python3 -c "
import json,sys,datetime
j=json.load(sys.stdin); a=j['attempts'][-1]
p=lambda s: datetime.datetime.fromisoformat(s.replace('Z','+00:00'))
o=j['outputs'][0]
print(json.dumps({'side':$side,'format':'$fmt','status':j['status'],'seconds':round((p(a['finished_at'])-p(a['started_at'])).total_seconds(),2),'bytes':o['bytes'],'duration':o.get('duration_seconds'),'fps':o.get('fps')}))"
  done
done
