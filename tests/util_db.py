"""Helpers for the task-database tests and benchmark: task functions the engines import (this
directory is on the engines' PYTHONPATH), a cluster context manager, and memory readings from
/proc."""

import contextlib
import os
import time

from conftest import Controller, Engines, connect, wait_for


def echo(x):
    return x


def shout(tag):
    import sys

    print(f"out:{tag}")
    print(f"err:{tag}", file=sys.stderr)
    return tag


def nbytes(blob):
    """Return only the size of the argument, so results stay small."""
    return len(blob)


def fail(msg):
    raise ValueError(msg)


@contextlib.contextmanager
def cluster(ipython_dir, args, n_engines=2, kind="rpar", profile="default"):
    """A controller with `args` and `n_engines` real Python engines; yields (ctl, engines, client)."""
    ctl = Controller(ipython_dir / f"profile_{profile}", args, kind=kind)
    eng = None
    client = None
    try:
        eng = Engines(ctl, n_engines) if n_engines else None
        client = connect(ctl, n_engines, eng) if n_engines else ctl.client()
        yield ctl, eng, client
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        if eng is not None:
            eng.stop()
        ctl.stop()


def wait_completed(client, msg_ids, timeout=60):
    """Wait until the hub reports every id completed."""

    def done():
        st = client.result_status(list(msg_ids), status_only=True)
        return not st["pending"] and sorted(st["completed"]) == sorted(set(msg_ids))

    wait_for(done, timeout=timeout, what=f"hub to complete {len(msg_ids)} tasks")


def proc_memory(pid):
    """(rss_bytes, pss_bytes) of a process; pss is None where smaps_rollup is unreadable."""
    rss = pss = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    return rss, pss


def tree_memory(pid):
    """Summed (rss, pss) of a process and its descendants (Python's ipcontroller forks its
    schedulers)."""
    pids = [pid]
    i = 0
    while i < len(pids):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pids[i]}/task/{pids[i]}/children") as f:
                pids += [int(p) for p in f.read().split()]
        i += 1
    rss = pss = 0
    for p in pids:
        with contextlib.suppress(OSError):
            r, s = proc_memory(p)
            rss += r or 0
            pss += s or 0
    return rss, pss


def now():
    return time.monotonic()


__all__ = [
    "echo",
    "shout",
    "nbytes",
    "fail",
    "cluster",
    "wait_completed",
    "proc_memory",
    "tree_memory",
    "now",
    "os",
]
