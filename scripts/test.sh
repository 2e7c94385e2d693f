#!/usr/bin/env bash
# Runs Kiln's whole test suite on a fresh machine. It installs what the tests need and is not
# there yet, finds or starts the servers they talk to (on loopback, stopping what it started),
# then runs every test in the workspace. Each test makes its own state: a temporary data
# directory, its own Postgres database, its own redis-server and S3 server on a free port.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
APT_UPDATED=""
ensure() { # ensure COMMAND PACKAGE: install the Debian package when the command is missing
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "test.sh: installing $2 (for $1)" >&2
  if [ -z "$APT_UPDATED" ]; then $SUDO apt-get update -qq >/dev/null; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$2" >/dev/null
}

ensure_pkg() { # ensure_pkg PACKAGE: install a Debian package unconditionally
  if [ -z "$APT_UPDATED" ]; then $SUDO apt-get update -qq >/dev/null; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$1" >/dev/null
}

CLEANUP=()
cleanup() { for c in "${CLEANUP[@]}"; do eval "$c" || true; done; }
trap cleanup EXIT

free_port() { # a TCP port nothing listens on, from $1 upwards
  local p=$1
  while (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}

ensure ffprobe ffmpeg          # checks the demo video
ensure redis-server redis-server # tests start their own redis-server processes
ensure chromium chromium        # the dashboard's tests drive a real headless Chromium
ensure chromedriver chromium-driver

# The S3 server tests start per test; built once, then cached in cargo's bin directory.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if ! s3s-fs --help >/dev/null 2>&1; then
  echo "test.sh: installing s3s-fs 0.14.1 (once)" >&2
  cargo install --quiet --locked s3s-fs@0.14.1 --features binary
fi

# Python tools the tests drive, in a venv built once and cached: a real Cog server (the `cog`
# package; its server runs without Docker) with Pillow for the fixture predictor, and the
# `standardwebhooks` package as an independent verifier of Kiln's webhook signatures.
if [ -z "${TEST_KILN_PYTHON:-}" ]; then
  ensure python3 python3
  VENV="${XDG_CACHE_HOME:-$HOME/.cache}/kiln-test/venv-1"
  if ! "$VENV/bin/python" -c 'import cog, PIL, standardwebhooks' >/dev/null 2>&1; then
    echo "test.sh: installing cog, pillow and standardwebhooks into $VENV (once)" >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV" 2>/dev/null || { ensure_pkg python3-venv; python3 -m venv "$VENV"; }
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
      'cog==0.23.1' 'pillow==13.0.0' 'standardwebhooks==1.1.0'
  fi
  export TEST_KILN_PYTHON="$VENV/bin/python"
fi

# Other people's clients, which the compatibility tests drive against Kiln exactly as users'
# code does: Replicate's and OpenAI's Python clients, pinned, in a venv of their own. They reach
# Kiln through a TLS front (socat, with a certificate openssl makes per test).
ensure socat socat
ensure openssl openssl
if [ -z "${TEST_KILN_CLIENTS_PYTHON:-}" ]; then
  ensure python3 python3
  CL_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/kiln-test/clients-1"
  if ! "$CL_VENV/bin/python" -c 'import replicate, openai' >/dev/null 2>&1; then
    echo "test.sh: installing replicate and openai into $CL_VENV (once)" >&2
    rm -rf "$CL_VENV"
    python3 -m venv "$CL_VENV" 2>/dev/null || { ensure_pkg python3-venv; python3 -m venv "$CL_VENV"; }
    "$CL_VENV/bin/pip" install --quiet --disable-pip-version-check 'replicate==1.0.7' 'openai==3.57.0'
  fi
  export TEST_KILN_CLIENTS_PYTHON="$CL_VENV/bin/python"
fi

# schemathesis, which fuzzes the api against its own OpenAPI document; in a venv of its own,
# since its dependencies and Cog's need not agree.
if [ -z "${TEST_KILN_SCHEMATHESIS:-}" ]; then
  ensure python3 python3
  ST_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/kiln-test/schemathesis-4.32.5"
  if ! "$ST_VENV/bin/schemathesis" --version >/dev/null 2>&1; then
    echo "test.sh: installing schemathesis into $ST_VENV (once)" >&2
    rm -rf "$ST_VENV"
    python3 -m venv "$ST_VENV" 2>/dev/null || { ensure_pkg python3-venv; python3 -m venv "$ST_VENV"; }
    "$ST_VENV/bin/pip" install --quiet --disable-pip-version-check 'schemathesis==4.32.5'
  fi
  export TEST_KILN_SCHEMATHESIS="$ST_VENV/bin/schemathesis"
fi

# Postgres: use TEST_KILN_POSTGRES_URL, else a local server that answers, else start our own.
pg_answers() { psql "$1" -Atqc 'select 1' >/dev/null 2>&1; }
if [ -z "${TEST_KILN_POSTGRES_URL:-}" ]; then
  LOCAL_PG=postgres://postgres@127.0.0.1:5432/postgres
  if [ -z "${TEST_KILN_OWN_POSTGRES:-}" ] && command -v psql >/dev/null 2>&1 && pg_answers "$LOCAL_PG"; then
    export TEST_KILN_POSTGRES_URL=$LOCAL_PG
  else
    PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$PGBIN" ]; then
      ensure pg_ctlcluster postgresql
      PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi
    PGDIR=$(mktemp -d /tmp/kiln-test-pg.XXXXXX)
    AS_PG=()
    if [ "$(id -u)" -eq 0 ]; then chown postgres "$PGDIR"; AS_PG=(runuser -u postgres --); fi
    PGPORT=$(free_port 55432)
    "${AS_PG[@]}" "$PGBIN/initdb" -D "$PGDIR/data" -U postgres --auth=trust >/dev/null
    "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/log" -w \
      -o "-p $PGPORT -k $PGDIR -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
    CLEANUP+=("${AS_PG[*]} $PGBIN/pg_ctl -D $PGDIR/data -m immediate stop >/dev/null; rm -rf $PGDIR")
    export TEST_KILN_POSTGRES_URL=postgres://postgres@127.0.0.1:$PGPORT/postgres
    echo "test.sh: started Postgres on 127.0.0.1:$PGPORT" >&2
  fi
fi

# The binary alone, with its own features (not the tests'): what `cargo run -- serve` builds.
cargo check --quiet --bin kiln

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
