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
. "$here/../scripts/sim-lib.sh"
for shape in $SHAPES; do
  db=delivery_sim_${shape//-/_}
  sim_database "$PG" "$db" "$BIN"
  psql "$PG/$db" -qAtc "CREATE SEQUENCE did; CREATE SEQUENCE bid;
    INSERT INTO jobs (id, tenant, model, input, status, created_at, run_after, rung_at, webhook_url, webhook_events, priority)
    SELECT lpad(g::text, 16, '0'), 'bench', 'bench/image', '{}', 'succeeded', 1, 1, 1, 'http://127.0.0.1:9/hook', 'job.succeeded', 'normal'
    FROM generate_series(1, $N) g; CHECKPOINT;"
  sim_phase "$PG/$db" 4 $((N / 4)) "$here/insert-$shape.sql"
  insert_wal=$PHASE_WAL; insert_s=$PHASE_SECONDS
  sim_phase "$PG/$db" 2 $((N / 64)) "$here/deliver-$shape.sql"
  python3 -c "
n=$N; print(f'$shape: insert $insert_wal WAL records, $insert_s s; deliver $PHASE_WAL WAL records, $PHASE_SECONDS s; {($insert_wal+$PHASE_WAL)/n:.1f} per delivery')"
done
