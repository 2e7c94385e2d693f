#!/usr/bin/env python3
"""CPU-seconds per process kind over one command's run.

Usage: bench/scripts/cpu-per-process.py COMMAND [ARGS...]
  e.g. TMPDIR=/dev/shm KILN_BIN=$PWD/target/release/kiln \
       bench/scripts/cpu-per-process.py ~/.cache/kiln-bench-peer/kiln/run.sh 10000 64 100 2

Runs COMMAND and reads every process's user + system time from /proc every 0.2 s, keeping each
process's last reading (a benchmark's processes end with it, so they cannot be read afterwards;
up to 0.2 s of a process's last moments can be missed). Processes that existed before the run
count only what they used during it. Prints the totals by kind: `kiln <subcommand>`, `node
<script>`, every Postgres backend as `postgres`, and other commands by name: the total
CPU-seconds, then the user and the system (kernel) seconds within it.
"""
import collections
import os
import subprocess
import sys
import time

TICKS = os.sysconf("SC_CLK_TCK")


def kind(pid, comm):
    try:
        argv = open(f"/proc/{pid}/cmdline").read().split("\0")
    except OSError:
        argv = [comm]
    if comm == "kiln" and len(argv) > 1:
        return "kiln " + argv[1]
    if comm == "node" and len(argv) > 1:
        return "node " + os.path.basename(argv[1])
    if comm.startswith("postgres"):
        return "postgres"
    return comm


def read_all(readings):
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds = (int(fields[11]) / TICKS, int(fields[12]) / TICKS)
        pid = int(entry)
        if pid not in readings:
            readings[pid] = [kind(pid, comm), seconds, seconds]
        readings[pid][2] = seconds


def main():
    before = {}
    read_all(before)
    readings = {pid: [k, s, s] for pid, (k, s, _) in before.items()}
    # A process first seen during the run started during it: it counts from zero.
    run = subprocess.Popen(sys.argv[1:])
    while run.poll() is None:
        seen = set(readings)
        read_all(readings)
        for pid in set(readings) - seen:
            readings[pid][1] = (0.0, 0.0)
        time.sleep(0.2)
    user, system = collections.Counter(), collections.Counter()
    for name, first, last in readings.values():
        user[name] += last[0] - first[0]
        system[name] += last[1] - first[1]
    totals = user + system
    for name, seconds in totals.most_common():
        if seconds >= 0.05:
            print(f"{seconds:8.2f} {name}  (user {user[name]:.2f}, system {system[name]:.2f})")
    sys.exit(run.returncode)


if __name__ == "__main__":
    main()
