#!/usr/bin/env bash
# Runs Kiln's whole test suite on a fresh machine. It installs what the tests need and is not
# there yet (ffprobe, to check the demo video), then runs every test in the workspace.
# Each test starts its own Kiln on a random loopback port with its own data directory.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v ffprobe >/dev/null 2>&1; then
  echo "test.sh: installing ffmpeg (for ffprobe)" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
  # nextest does not run doctests.
  cargo test --workspace --doc --quiet
else
  cargo test --workspace --no-fail-fast "$@"
fi
