#!/usr/bin/env bash
# The fairness window's admissions in four shapes, on Kiln's real schema, with pgbench: how much
# Postgres writes and spends per job on the `jobs` side of a held job's life (BENCHMARKS.md, issue
# 17, thirteenth pass). Each shape gets a fresh database migrated by `kiln migrate`, then:
#   1. 4 clients insert N jobs of one tenant, held behind its window (`insert-SHAPE.sql`);
#   2. 2 clients each admit the next held job and claim it in one transaction, then succeed it
#      (`run-SHAPE.sql`), N in all.
# Shapes: a = today (the admission rewrites the job's row); b = the queue state in two narrow
# tables (held line, admitted jobs), `jobs` keeping no queue index; c = the held line in a narrow
# table and the admission a HOT update (`rung_at` in no index, fillfactor 70); d = no admission
# at all (every job inserted admitted: the bound, not a design). Attempts, transitions and
# deliveries are left out: they are the same in every shape.
# `synchronous_commit` is off for the clients, so the seconds are CPU, not commit waits.
# Usage: KILN_BIN=target/release/kiln run.sh PG_URL [N=10000] [SHAPES="a b c d"]
#   PG_URL: a server (postgres://user@host:port); databases admission_sim_* are made and kept.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
PG=${1:?a Postgres server URL}; N=${2:-10000}; SHAPES=${3:-a b c d}
BIN=${KILN_BIN:?set KILN_BIN to the kiln binary}; unset KILN_BIN
. "$here/../scripts/sim-lib.sh"
for shape in $SHAPES; do
  db=admission_sim_$shape
  sim_database "$PG" "$db" "$BIN"
  psql "$PG/$db" -qAtc "CREATE SEQUENCE jid; CREATE SEQUENCE cid"
  case $shape in
    b) psql "$PG/$db" -qAt <<'SQL'
DROP INDEX jobs_held; DROP INDEX jobs_admitted; DROP INDEX jobs_due;
CREATE TABLE queue_held (tenant TEXT NOT NULL, priority TEXT NOT NULL, id TEXT COLLATE "C" NOT NULL, PRIMARY KEY (tenant, priority, id));
CREATE TABLE queue_admitted (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, priority TEXT NOT NULL, rung_at BIGINT NOT NULL);
CREATE INDEX queue_admitted_tenant ON queue_admitted (tenant);
SQL
    ;;
    c) psql "$PG/$db" -qAt <<'SQL'
DROP INDEX jobs_held; DROP INDEX jobs_admitted; DROP INDEX jobs_due;
CREATE INDEX jobs_admitted ON jobs (tenant) WHERE status = 'queued';
CREATE INDEX jobs_due ON jobs (run_after) WHERE status = 'queued';
ALTER TABLE jobs SET (fillfactor = 70);
CREATE TABLE queue_held (tenant TEXT NOT NULL, priority TEXT NOT NULL, id TEXT COLLATE "C" NOT NULL, PRIMARY KEY (tenant, priority, id));
SQL
    ;;
  esac
  sim_phase "$PG/$db" 4 $((N / 4)) "$here/insert-$shape.sql"
  insert_wal=$PHASE_WAL; insert_s=$PHASE_SECONDS
  sim_phase "$PG/$db" 2 $((N / 2)) "$here/run-$shape.sql"
  done_jobs=$(psql "$PG/$db" -qAtc "SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'")
  python3 -c "
n=$N; print(f'$shape: insert $insert_wal WAL records, $insert_s s; admit+claim+succeed $PHASE_WAL WAL records, $PHASE_SECONDS s; {($insert_wal+$PHASE_WAL)/n:.1f} per job; $done_jobs succeeded')"
done
