#!/usr/bin/env bash
# The README's quick start, end to end: the client, then the same with curl, a chain to a
# video by reference, the event stream, usage and metrics. Start Kiln first, in another shell
# and from the same directory (the client and this script read the key it saves):
#
#   KILN_METRICS_LISTEN=127.0.0.1:9464 kiln serve
#   ./examples/quickstart.sh
#
# KILN (default: kiln on the PATH), KILN_URL, KILN_API_KEY and KILN_METRICS_URL point it
# elsewhere. Kiln's test suite runs it (tests/e2e/examples.rs).
set -euo pipefail
KILN=${KILN:-kiln}
export KILN_URL=${KILN_URL:-http://127.0.0.1:8080}
export KILN_API_KEY=${KILN_API_KEY:-$(cat kiln-data/api-key)}
auth="Authorization: Bearer $KILN_API_KEY"

# 1. The client: the models, then one image, waited for and downloaded (its path is printed).
"$KILN" models
"$KILN" run demo/image prompt="a kiln at dusk" width=256 height=256 seed=7 --wait --output out

# 2. The same with curl. Prefer: wait=60 holds the answer until the job ends (or a minute).
ID=$(curl -sS --fail-with-body "$KILN_URL/v1/jobs" -H "$auth" -H 'Content-Type: application/json' \
  -H 'Prefer: wait=60' \
  -d '{"model": "demo/image", "input": {"prompt": "a kiln at dusk", "width": 256, "height": 256, "seed": 7}}' \
  | grep -o '"id":"[^"]*"' | head -n1 | cut -d'"' -f4)
echo "image job: $ID"
curl -sS --fail-with-body "$KILN_URL/v1/jobs/$ID" -H "$auth"; echo
curl -sSL --fail-with-body -o image.png "$KILN_URL/v1/jobs/$ID/outputs/0" -H "$auth"

# 3. Chain by reference: an earlier output is an input, passed inside Kiln, never re-downloaded.
UP=$("$KILN" run demo/upscale image="kiln://jobs/$ID/outputs/0" scale=2)
"$KILN" jobs watch "$UP" --output out
VIDEO=$("$KILN" run demo/video image="kiln://jobs/$UP/outputs/0" seconds=2 fps=12)

# 4. Follow the video job as server-sent events, one per change, until it ends.
curl -sS -N --fail-with-body "$KILN_URL/v1/jobs/$VIDEO/events" -H "$auth" | grep '^event:\|"status"' | cut -c1-120
curl -sSL --fail-with-body -o clip.mp4 "$KILN_URL/v1/jobs/$VIDEO/outputs/0" -H "$auth"
echo "clip.mp4: $(wc -c < clip.mp4) bytes"

# 5. What it all cost, and the operator's view.
"$KILN" usage --by model
curl -sS --fail-with-body "${KILN_METRICS_URL:-http://127.0.0.1:9464}/metrics" | grep '^kiln_jobs\|^kiln_outputs_stored_total'
