#!/usr/bin/env python3
"""Every write Postgres makes for one job: WAL records per job, by relation and kind.

Usage: bench/scripts/wal-per-job.py PG_URL PG_WAL_DIR N COMMAND [ARGS...]
  e.g. PEER_PG=postgres://postgres@127.0.0.1:5499 KILN_BIN=$PWD/target/release/kiln \
       bench/scripts/wal-per-job.py postgres://postgres@127.0.0.1:5499 /tmp/pgstat/data/pg_wal \
       10000 ~/.cache/kiln-bench-peer/kiln/run.sh 10000 64 100 2

PG_URL is the server the command runs against (its `postgres` database is used), PG_WAL_DIR its
`pg_wal` directory (readable by whoever runs this, and kept long enough: set `wal_keep_size`
to a few GB first, or checkpoints recycle the run's segments), N the jobs the command runs.

Reads the insert LSN before and after COMMAND, and while it runs, maps the relation file
numbers of the database it creates (the benchmark's `kiln_peer_*`, dropped again at its end) to
their names. Then `pg_waldump` over the range, each record charged to the relation of its first
block. Prints, per relation, the heap records (insert, update, HOT update, prune), the row-lock
records (a `FOR UPDATE`, or the lock Postgres writes before an update whose new version goes to
another page) and the index entries, per job; then the records per job in all.
"""
import collections
import re
import shutil
import subprocess
import sys
import threading
import time


def psql(url, sql):
    out = subprocess.run(["psql", url, "-qAtc", sql], capture_output=True, text=True)
    return out.stdout.strip()


def watch_relations(server, names, done):
    """Fills `names` with the run's relfilenode -> relation name, once its tables exist."""
    while not done.is_set():
        db = psql(f"{server}/postgres", "SELECT datname FROM pg_database WHERE datname LIKE 'kiln_peer_%' LIMIT 1")
        if db:
            rows = psql(
                f"{server}/{db}",
                "SELECT relfilenode, relname FROM pg_class WHERE relfilenode <> 0 "
                "AND EXISTS (SELECT 1 FROM pg_class WHERE relname = 'webhook_tries')",
            )
            if rows:
                for line in rows.splitlines():
                    node, name = line.split("|", 1)
                    names[node] = name
                return
        time.sleep(0.2)


def table_of(name, tables):
    return next((t for t in tables if name == t or name.startswith(t + "_")), name)


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    server, wal_dir, jobs, command = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    server = server.rstrip("/").rsplit("/", 1)[0] if server.count("/") > 2 else server
    lsn = "SELECT pg_current_wal_insert_lsn()"
    start = psql(f"{server}/postgres", lsn)
    names, done = {}, threading.Event()
    watcher = threading.Thread(target=watch_relations, args=(server, names, done))
    watcher.start()
    run = subprocess.run(command)
    done.set()
    watcher.join()
    end = psql(f"{server}/postgres", lsn)
    if run.returncode != 0 or not names:
        sys.exit(f"the run failed ({run.returncode}) or its relations were never seen")
    waldump = shutil.which("pg_waldump") or next(
        iter(sorted(subprocess.run(["sh", "-c", "ls /usr/lib/postgresql/*/bin/pg_waldump"],
                                   capture_output=True, text=True).stdout.split())), "pg_waldump")
    dump = subprocess.run([waldump, "-p", wal_dir, "-s", start, "-e", end],
                          capture_output=True, text=True)
    if dump.returncode != 0 and not dump.stdout:
        sys.exit(dump.stderr)
    # Tables are the relations without an index's suffix: the heap records name them.
    counts = collections.defaultdict(collections.Counter)
    total = 0
    record = re.compile(r"rmgr: (\w+)\s.*?desc: (\w+)")
    block = re.compile(r"blkref #0: rel \d+/\d+/(\d+)")
    entries = []
    for line in dump.stdout.splitlines():
        m = record.search(line)
        if not m:
            continue
        total += 1
        b = block.search(line)
        entries.append((m.group(1), m.group(2), names.get(b.group(1)) if b else None))
    tables = sorted({n for rm, _, n in entries if rm in ("Heap", "Heap2") and n}, key=len, reverse=True)
    for rm, kind, name in entries:
        if name is None:
            counts["(no relation: commits and the like)"]["other"] += 1
            continue
        table = table_of(name, tables)
        if rm == "Heap" and kind == "LOCK":
            counts[table]["row locks"] += 1
        elif rm in ("Heap", "Heap2"):
            counts[table]["heap"] += 1
        elif rm == "Btree" and kind.startswith("INSERT"):
            counts[table]["index entries"] += 1
        else:
            counts[table]["other"] += 1
    print(f"{total} WAL records between {start} and {end}: {total / jobs:.1f} per job")
    print("| relation | heap | row locks | index entries | other | all |")
    print("| --- | --- | --- | --- | --- | --- |")
    for table, c in sorted(counts.items(), key=lambda kv: -sum(kv[1].values())):
        all_ = sum(c.values())
        if all_ / jobs < 0.05:
            continue
        cells = " | ".join(f"{c[k] / jobs:.2f}" for k in ("heap", "row locks", "index entries", "other"))
        print(f"| `{table}` | {cells} | {all_ / jobs:.1f} |")


if __name__ == "__main__":
    main()
