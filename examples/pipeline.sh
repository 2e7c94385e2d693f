#!/usr/bin/env bash
# Image → 2× upscale → video through Kiln with curl alone: one request creates the whole chain,
# the same request waits up to a minute for it (Prefer: wait), and the events stream shows each
# step as it moves. Run it against any Kiln:
#
#   KILN_URL=http://localhost:8080 KILN_API_KEY=kiln_... ./examples/pipeline.sh
#
# It prints the pipeline as Kiln answers it and, at the end, the video's download URL.
set -euo pipefail
: "${KILN_URL:=http://localhost:8080}"
: "${KILN_API_KEY:?set KILN_API_KEY to a key from 'kiln keys create' (kiln serve prints the first one)}"
auth="Authorization: Bearer $KILN_API_KEY"

# 1. Create the pipeline. A step reads an earlier step's output with "$steps.NAME.outputs[N]";
#    Kiln passes it by storage reference, never by re-downloading a public URL.
#    Prefer: wait=60 holds the answer until the pipeline ends (201) or a minute passes (202).
created=$(curl -sS --fail-with-body "$KILN_URL/v1/pipelines" \
  -H "$auth" -H 'Content-Type: application/json' -H 'Prefer: wait=60' \
  -d '{"steps": [
        {"name": "image",   "model": "demo/image",   "input": {"prompt": "a kiln at dusk", "width": 256, "height": 256, "seed": 7}},
        {"name": "upscale", "model": "demo/upscale", "input": {"image": "$steps.image.outputs[0]", "scale": 2}},
        {"name": "video",   "model": "demo/video",   "input": {"image": "$steps.upscale.outputs[0]", "seconds": 2, "fps": 12}}
      ]}')
echo "$created"

# The id and status, read without jq (the first "id" and "status" of the body are the pipeline's).
id=$(printf '%s' "$created" | grep -o '"id":"[^"]*"' | head -n1 | cut -d'"' -f4)
status=$(printf '%s' "$created" | grep -o '"status":"[^"]*"' | head -n1 | cut -d'"' -f4)
echo "pipeline $id is $status"

# 2. Still running after a minute? Follow it as server-sent events until it ends.
if [ "$status" = "running" ] || [ "$status" = "queued" ]; then
  curl -sS -N "$KILN_URL/v1/pipelines/$id/events" -H "$auth" | while IFS= read -r line; do
    case "$line" in data:*) echo "${line#data: }" | grep -o '"status":"[^"]*"' | head -n1 ;; esac
  done
fi

# 3. The finished pipeline: its outputs are the final step's, with download URLs kept 7 days.
final=$(curl -sS --fail-with-body "$KILN_URL/v1/pipelines/$id" -H "$auth")
status=$(printf '%s' "$final" | grep -o '"status":"[^"]*"' | head -n1 | cut -d'"' -f4)
echo "pipeline $id ended $status"
[ "$status" = "succeeded" ] || { echo "$final" >&2; exit 1; }
printf '%s' "$final" | grep -o '"url":"[^"]*"' | head -n1 | cut -d'"' -f4
