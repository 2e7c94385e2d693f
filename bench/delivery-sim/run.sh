#!/usr/bin/env bash
# A webhook delivery's rows in two shapes, on Kiln's real schema, with pgbench: what Postgres
# writes and spends per delivery (BENCHMARKS.md, issue 17, thirteenth pass). Each shape gets a
# fresh database migrated by `kiln migrate` and N finished jobs, then:
#   1. 4 clients insert one `job.succeeded` delivery per job (`insert-SHAPE.sql`);
#   2. 2 clients deliver them, 32 at a time: each batch's results written and its tries logged,
#      as the deliverer does (`deliver-SHAPE.sql`).
# Shapes: claimed-later = today (inserted pending and due; the deliverer's claim takes a batch
# with `FOR UPDATE SKIP LOCKED`, marks it held and joins its jobs and keys, then writes the
# results); born-claimed = inserted already held by the worker that wrote it (its hold and token
# set, unless the job has another delivery pending), so the results are the only write after.
# `synchronous_commit` is off for the clients, so the seconds are CPU, not commit waits.
# Usage: KILN_BIN=target/release/kiln run.sh PG_URL [N=10000] [SHAPES="claimed-later born-claimed"]
#   PG_URL: a server (postgres://user@host:port); databases delivery_sim_* are made and kept.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
PG=${1:?a Postgres server URL}; N=${2:-10000}; SHAPES=${3:-claimed-later born-claimed}
BIN=${KILN_BIN:?set KILN_BIN to the kiln binary}; unset KILN_BIN
for shape in $SHAPES; do
  db=delivery_sim_${shape//-/_}
  psql "$PG/postgres" -qAtc "DROP DATABASE IF EXISTS $db" 2>/dev/null; psql "$PG/postgres" -qAtc "CREATE DATABASE $db"
  KILN_DATABASE_URL="$PG/$db" "$BIN" migrate >/dev/null 2>&1
  psql "$PG/$db" -qAtc "CREATE SEQUENCE did; CREATE SEQUENCE bid;
    INSERT INTO jobs (id, tenant, model, input, status, created_at, run_after, rung_at, webhook_url, webhook_events, priority)
    SELECT lpad(g::text, 16, '0'), 'bench', 'bench/image', '{}', 'succeeded', 1, 1, 1, 'http://127.0.0.1:9/hook', 'job.succeeded', 'normal'
    FROM generate_series(1, $N) g; CHECKPOINT;"
  wal() { psql "$PG/$db" -qAtc "SELECT wal_records FROM pg_stat_wal"; }
  seconds() { python3 -c "import time; print(time.monotonic())"; }
  w0=$(wal); t0=$(seconds)
  PGOPTIONS='-c synchronous_commit=off' pgbench -n -M prepared -c 4 -j 2 -t $((N / 4)) -f "$here/insert-$shape.sql" "$PG/$db" >/dev/null
  w1=$(wal); t1=$(seconds)
  PGOPTIONS='-c synchronous_commit=off' pgbench -n -M prepared -c 2 -j 2 -t $((N / 64)) -f "$here/deliver-$shape.sql" "$PG/$db" >/dev/null
  w2=$(wal); t2=$(seconds)
  python3 -c "
n=$N; print(f'$shape: insert {$w1-$w0} WAL records, {$t1-$t0:.2f} s; deliver {$w2-$w1} WAL records, {$t2-$t1:.2f} s; {($w2-$w0)/n:.1f} per delivery')"
done
