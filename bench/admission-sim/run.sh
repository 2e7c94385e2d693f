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
for shape in $SHAPES; do
  db=admission_sim_$shape
  psql "$PG/postgres" -qAtc "DROP DATABASE IF EXISTS $db" 2>/dev/null; psql "$PG/postgres" -qAtc "CREATE DATABASE $db"
  KILN_DATABASE_URL="$PG/$db" "$BIN" migrate >/dev/null 2>&1
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
  wal() { psql "$PG/$db" -qAtc "SELECT wal_records FROM pg_stat_wal"; }
  seconds() { python3 -c "import time; print(time.monotonic())"; }
  w0=$(wal); t0=$(seconds)
  PGOPTIONS='-c synchronous_commit=off' pgbench -n -M prepared -c 4 -j 2 -t $((N / 4)) -f "$here/insert-$shape.sql" "$PG/$db" >/dev/null
  w1=$(wal); t1=$(seconds)
  PGOPTIONS='-c synchronous_commit=off' pgbench -n -M prepared -c 2 -j 2 -t $((N / 2)) -f "$here/run-$shape.sql" "$PG/$db" >/dev/null
  w2=$(wal); t2=$(seconds)
  done_jobs=$(psql "$PG/$db" -qAtc "SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'")
  python3 -c "
n=$N; print(f'$shape: insert {$w1-$w0} WAL records, {$t1-$t0:.2f} s; admit+claim+succeed {$w2-$w1} WAL records, {$t2-$t1:.2f} s; {($w2-$w0)/n:.1f} per job; {$done_jobs} succeeded')"
done
