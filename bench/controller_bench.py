#!/usr/bin/env python
"""rpar-controller vs Python ipcontroller: same Python ipengines (2), same real Python client.

For each controller kind, in one run, prints, and then the ratio rpar / python:
  * direct round trip: median and p90 of `rc[0].apply_sync(noop)` in µs;
  * load-balanced throughput: `lv.map(noop, range(N))` (chunksize 1: N tasks) and N
    `lv.apply_async(noop)` submitted at once, for `TaskScheduler.hwm` = 1 (default) and 0
    (greedy), in tasks/s;
  * controller CPU time per task (utime+stime from /proc of the controller process and ALL its
    descendants: ipcontroller's scheduler / heart-monitor / relay processes), in µs, per workload;
  * registration latency: from the engine's "Completed registration" log line (the engine
    answers heartbeats from then on) to the client seeing its registration_notification, and
    from engine start to registered, in ms (the client polls `rc.ids` every 2 ms).

Usage:  . ci/env.sh && cargo build --release -p rpar-controller && python bench/controller_bench.py
        python bench/controller_bench.py --quick        # about a third of the work
Needs target/release/rpar-controller (or $RPAR_BIN_DIR/rpar-controller). No assertions.
"""

import argparse
import datetime as dt
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
os.environ.setdefault("RPAR_BIN_DIR", str(ROOT / "target" / "release"))
sys.path.insert(0, str(ROOT / "tests"))

from common import cpu_seconds, descendants  # noqa: E402
from conftest import Controller, Engines  # noqa: E402

N_ENGINES = 2


def tree_cpu_seconds(pid):
    """utime+stime of `pid` and every descendant (threads are included per process)."""
    return cpu_seconds([pid, *descendants(pid)])


def noop(*a):
    return None


LOG_TIME = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)[.,](\d{3}) .*Completed registration with id (\d+)")


def completed_registration_times(engines):
    """Engine id -> wall time of its "Completed registration" log line."""
    out = {}
    for log, path in engines.logs:
        log.flush()
        for line in path.read_text(errors="replace").splitlines():
            m = LOG_TIME.search(line)
            if m:
                t = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(m.group(2)) / 1000
                out[int(m.group(3))] = t
    return out


class Cluster:
    def __init__(self, kind, workdir, args):
        import ipyparallel as ipp  # noqa: F401

        self.kind = kind
        ipdir = Path(tempfile.mkdtemp(prefix=f"{kind}_", dir=workdir))
        os.environ["IPYTHONDIR"] = str(ipdir)
        self.ctl = Controller(ipdir / "profile_default", args, kind=kind)
        self.rc = self.ctl.client()
        self.eng = None

    def start_engines(self, timeout=60):
        """Start the engines; return (per-engine latency from its heart start to registered, ms;
        engine start to all registered, ms)."""
        seen = {}
        t0 = time.monotonic()
        self.eng = Engines(self.ctl, N_ENGINES, ["--log-level=INFO"])
        deadline = t0 + timeout
        while len(seen) < N_ENGINES:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind}: engines did not register\n{self.ctl.output()}\n{self.eng.output()}")
            now = time.time()
            for i in self.rc.ids:
                seen.setdefault(i, now)
            time.sleep(0.002)
        startup = (time.monotonic() - t0) * 1000
        time.sleep(0.3)  # let the engines' logs reach the files
        hearts = completed_registration_times(self.eng)
        lat = [(seen[i] - hearts[i]) * 1000 for i in seen if i in hearts]
        return lat, startup

    def close(self):
        try:
            self.rc.close()
        finally:
            if self.eng is not None:
                self.eng.stop()
            self.ctl.stop()


def measure(cluster, n, fn):
    """Run fn(); return (wall seconds, controller CPU µs per task over n tasks)."""
    pid = cluster.ctl.proc.pid
    c0, t0 = tree_cpu_seconds(pid), time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    return wall, (tree_cpu_seconds(pid) - c0) / n * 1e6


def apply_async_all(lv, n):
    """Submit n no-op tasks at once, then wait for every result."""
    ars = [lv.apply_async(noop) for _ in range(n)]
    for ar in ars:
        ar.get(timeout=300)


def run_kind(kind, a, workdir):
    res = {}
    args = [f"--ping={a.ping}"] if a.ping else []
    c = Cluster(kind, workdir, args)
    try:
        lat, startup = c.start_engines()
        res["reg_latency_ms"] = statistics.median(lat) if lat else float("nan")
        res["reg_latency_max_ms"] = max(lat) if lat else float("nan")
        res["engine_start_to_registered_ms"] = startup
        rc = c.rc
        dv = rc[0]
        for _ in range(20):
            dv.apply_sync(noop)
        times = []

        def direct():
            for _ in range(a.direct):
                t = time.perf_counter()
                dv.apply_sync(noop)
                times.append(time.perf_counter() - t)

        _, res["direct_cpu_us"] = measure(c, a.direct, direct)
        times.sort()
        res["direct_rtt_us"] = statistics.median(times) * 1e6
        res["direct_rtt_p90_us"] = times[int(len(times) * 0.9)] * 1e6

        lv = rc.load_balanced_view()
        lv.map(noop, range(50), block=True)
        wall, res["map_cpu_us"] = measure(c, a.tasks, lambda: lv.map(noop, range(a.tasks), block=True))
        res["map_tasks_s"] = a.tasks / wall

        wall, res["async_hwm1_cpu_us"] = measure(c, a.tasks, lambda: apply_async_all(lv, a.tasks))
        res["async_hwm1_tasks_s"] = a.tasks / wall
    finally:
        c.close()

    c = Cluster(kind, workdir, args + ["--TaskScheduler.hwm=0"])
    try:
        c.start_engines()
        lv = c.rc.load_balanced_view()
        lv.map(noop, range(50), block=True)
        wall, res["async_hwm0_cpu_us"] = measure(c, a.tasks, lambda: apply_async_all(lv, a.tasks))
        res["async_hwm0_tasks_s"] = a.tasks / wall
    finally:
        c.close()
    return res


ROWS = [
    ("direct_rtt_us", "direct apply_sync round trip, median (µs)"),
    ("direct_rtt_p90_us", "direct apply_sync round trip, p90 (µs)"),
    ("direct_cpu_us", "controller CPU per direct task (µs)"),
    ("map_tasks_s", "lv.map no-op, tasks/s"),
    ("map_cpu_us", "controller CPU per lv.map task (µs)"),
    ("async_hwm1_tasks_s", "lv.apply_async x N, hwm=1, tasks/s"),
    ("async_hwm1_cpu_us", "controller CPU per task, apply_async hwm=1 (µs)"),
    ("async_hwm0_tasks_s", "lv.apply_async x N, hwm=0, tasks/s"),
    ("async_hwm0_cpu_us", "controller CPU per task, apply_async hwm=0 (µs)"),
    ("reg_latency_ms", "registration: engine heart up -> notified, median (ms)"),
    ("reg_latency_max_ms", "registration: engine heart up -> notified, max (ms)"),
    ("engine_start_to_registered_ms", "registration: engine start -> all registered (ms)"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer tasks (about 30 s)")
    ap.add_argument("--tasks", type=int, help="load-balanced tasks per workload (default 3000, quick 1000)")
    ap.add_argument("--direct", type=int, help="direct round trips (default 1000, quick 300)")
    ap.add_argument("--ping", type=int, default=0, help="heartbeat period in ms for both (default: their own)")
    ap.add_argument("--only", choices=["rpar", "python"], help="run one controller kind only")
    a = ap.parse_args()
    a.tasks = a.tasks or (1000 if a.quick else 3000)
    a.direct = a.direct or (300 if a.quick else 1000)
    binary = Path(os.environ["RPAR_BIN_DIR"]) / "rpar-controller"
    if not binary.exists():
        sys.exit(f"{binary} is missing: cargo build --release -p rpar-controller (or set RPAR_BIN_DIR)")
    kinds = [a.only] if a.only else ["rpar", "python"]
    results = {}
    with tempfile.TemporaryDirectory(prefix="controller_bench_") as wd:
        for kind in kinds:
            print(f"# {kind}: {a.direct} direct, {a.tasks} load-balanced tasks per workload ...", flush=True)
            results[kind] = run_kind(kind, a, wd)
    print(f"\n{'':56} " + " ".join(f"{k:>10}" for k in kinds) + ("  rpar/python" if len(kinds) == 2 else ""))
    for key, label in ROWS:
        vals = [results[k][key] for k in kinds]
        line = f"{label:56} " + " ".join(f"{v:10.1f}" for v in vals)
        if len(kinds) == 2 and vals[1]:
            line += f"  {vals[0] / vals[1]:11.3f}"
        print(line)
    print(f"\nbinary: {binary}; goals (issue 2): controller CPU/task <= 30 µs; registered <= 100 ms after the "
          "first heartbeat")


if __name__ == "__main__":
    main()
