# Shared by the pgbench simulations (`bench/admission-sim`, `bench/delivery-sim`), sourced, not
# run: a fresh database with Kiln's schema, and one pgbench phase measured in the WAL records
# it wrote and the seconds it took. `synchronous_commit` is off for the phase's clients, so its
# seconds are CPU, not commit waits.

# sim_database PG_URL DB KILN_BIN: drops and creates DB, then migrates it with `kiln migrate`.
sim_database() {
  psql "$1/postgres" -qAtc "DROP DATABASE IF EXISTS $2" 2>/dev/null
  psql "$1/postgres" -qAtc "CREATE DATABASE $2"
  KILN_DATABASE_URL="$1/$2" "$3" migrate >/dev/null 2>&1
}

# sim_phase DB_URL CLIENTS TRANSACTIONS_PER_CLIENT SCRIPT: runs SCRIPT with pgbench and sets
# PHASE_WAL (WAL records written) and PHASE_SECONDS.
sim_phase() {
  local w0 t0 w1 t1
  w0=$(psql "$1" -qAtc "SELECT wal_records FROM pg_stat_wal"); t0=$(date +%s.%N)
  PGOPTIONS='-c synchronous_commit=off' pgbench -n -M prepared -c "$2" -j 2 -t "$3" -f "$4" "$1" >/dev/null
  w1=$(psql "$1" -qAtc "SELECT wal_records FROM pg_stat_wal"); t1=$(date +%s.%N)
  PHASE_WAL=$((w1 - w0))
  PHASE_SECONDS=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
}
