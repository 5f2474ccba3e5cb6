#!/usr/bin/env python
"""What a hand-off between two threads costs on this machine: a one-byte pipe ping-pong
between two threads, median round trip, with the threads free to run on any CPU and with
both pinned to one CPU. On a virtual machine a wake-up on another, idle vCPU can cost tens of
microseconds; every thread hand-off on a request's path (client, controller, engine, for rpar
and ipyparallel alike) pays it.

Usage: python bench/handoff_bench.py [--n 3000]
No assertions: numbers only.
"""

import argparse
import os
import statistics
import threading
import time


def ping_pong(n):
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()

    def peer():
        for _ in range(n):
            os.read(r1, 1)
            os.write(w2, b"x")

    t = threading.Thread(target=peer)
    t.start()
    times = []
    for _ in range(n):
        a = time.perf_counter()
        os.write(w1, b"x")
        os.read(r2, 1)
        times.append(time.perf_counter() - a)
    t.join()
    for fd in (r1, w1, r2, w2):
        os.close(fd)
    return statistics.median(times) * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    a = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    free = ping_pong(a.n)
    os.sched_setaffinity(0, {cpus[0]})
    one = ping_pong(a.n)
    os.sched_setaffinity(0, set(cpus))
    print(f"pipe ping-pong between two threads, median of {a.n}, {len(cpus)} CPUs:")
    print(f"  free to run anywhere   {free:8.1f} µs")
    print(f"  both on one CPU        {one:8.1f} µs")
    print(f"  ratio                  {free / one:8.1f}")


if __name__ == "__main__":
    main()
