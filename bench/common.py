"""Readings from /proc shared by the benchmarks: a process's descendants, their CPU time (in
ticks per process, or exact per thread) and their memory (PSS)."""

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def descendants(pid):
    """Every process below `pid` (children, grandchildren, ...), not `pid` itself."""
    kids = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for k in kids.get(p, []):
            out.append(k)
            todo.append(k)
    return out


def cpu_seconds(pids):
    """Summed utime+stime of `pids` (threads are included per process)."""
    t = 0
    for p in pids:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            t += int(f[11]) + int(f[12])
        except (OSError, IndexError):
            pass
    return t / TICK


def thread_times(pids):
    """CPU nanoseconds of every live thread of `pids`, as {(pid, tid): ns}, from
    /proc/PID/task/TID/schedstat. Exact, where utime+stime come in whole ticks (10 ms: over a
    few hundred tasks, a tick per process moves a per-task figure by tens of µs)."""
    out = {}
    for p in pids:
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tids:
            try:
                out[(p, t)] = int(Path(f"/proc/{p}/task/{t}/schedstat").read_text().split()[0])
            except (OSError, IndexError, ValueError):
                pass
    return out


def cpu_between(before, after):
    """CPU seconds used between two [`thread_times`] readings: a thread started in between
    counts whole; one that ended in between is not counted (the processes measured here keep
    their threads)."""
    return sum(ns - before.get(k, 0) for k, ns in after.items()) / 1e9


def pss_kib(pids):
    """Summed PSS of `pids` in KiB, from /proc/<pid>/smaps_rollup."""
    t = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    t += int(line.split()[1])
        except OSError:
            pass
    return t


def alternating_medians(fns, n):
    """The median time in seconds of each of `fns` over `n` calls each, called in turn
    (fns[0], fns[1], ..., fns[0], ...), so that a drift in the machine's load reaches all of
    them alike; timing one after the other made the same two figures swap places between runs."""
    import statistics
    import time

    times = [[] for _ in fns]
    for _ in range(n):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]
