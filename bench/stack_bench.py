#!/usr/bin/env python
"""The full stack side by side: `rpar cluster start --n=N` (rpar-controller + mpiexec -n N
rpar-engine) against `ipcluster start --n=N` (ipcontroller + N ipengines), same Python client.

For each kind, in one run (numbers only, no assertions), then the ratio rpar / ipyparallel
(for a time, below 1 is better for rpar; for a rate, above 1):
  * start -> all registered, start -> first result on all, and stop, for every --sizes N;
  * at the first size: direct and load-balanced `apply_sync` round trip (median); load-balanced
    tasks/s for a no-op and for 10 KB and 1 MB (numpy) arguments, with the controller's, the
    engines' and the client's CPU per task (per-thread schedstat from /proc, exact where
    utime+stime come in 10 ms ticks; the controller with its descendants, the engines with
    everything else the launcher started); `dview.execute` on all; push and pull of 1 MiB to /
    from all; PSS per engine, of the largest engine and of the controller;
  * the MPI hop (rpar only): `rc[e].apply_sync(noop)` median for the engine on rank 0 and on the
    last rank, with doorbells and with the cross-node fallback (RPAR_ENGINE_DOORBELL=0), and idle
    CPU per rank over --idle seconds.

Usage:  . ci/env.sh && cargo build --release && python bench/stack_bench.py
        python bench/stack_bench.py --quick          # fewer tasks, N = 4 only
Needs target/release/{rpar,rpar-controller,rpar-engine} (or $RPAR_BIN_DIR).
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import alternating_medians, cpu_between, cpu_seconds, descendants, pss_kib, thread_times

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("RPAR_BIN_DIR", ROOT / "target" / "release"))
# other rpar builds to compare, by kind name (--base)
BIN_OF = {}


def noop(*a):
    return None


def mpi_rank():
    import os

    return int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "-1")))


def argv(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def program(pid):
    """'controller', 'engine' or None, from the program (or `-m` module) a process runs."""
    for a in argv(pid)[:3]:
        name = a.rsplit("/", 1)[-1]
        if name in ("rpar-controller", "ipcontroller", "ipyparallel.controller"):
            return "controller"
        if name in ("rpar-engine", "ipengine", "ipyparallel.engine") or name.startswith("ipyparallel.engine."):
            return "engine"
    return None


class Stack:
    """One cluster started the way a user starts it, in its own IPYTHONDIR."""

    def __init__(self, kind, n, workdir, env=None):
        self.kind, self.n = kind, n
        self.ipdir = Path(tempfile.mkdtemp(prefix=f"{kind}{n}_", dir=workdir))
        self.env = dict(os.environ, IPYTHONDIR=str(self.ipdir), **(env or {}))
        for k in ("IPP_PROFILE_DIR", "IPP_CLUSTER_ID", "IPP_CONNECTION_INFO"):
            self.env.pop(k, None)
        self.log = open(self.ipdir / "cluster.log", "w")
        self.rc = None

    def cmd(self, verb):
        if self.kind != "ipp":
            return [str(BIN_OF.get(self.kind, BIN) / "rpar"), "cluster", verb] + ([f"--n={self.n}"] if verb == "start" else [])
        return [sys.executable, "-m", "ipyparallel.cluster", verb] + ([f"--n={self.n}"] if verb == "start" else [])

    def start(self, timeout=120):
        """Start; return (s to all registered, s to first result on all)."""
        import ipyparallel as ipp

        cfile = self.ipdir / "profile_default" / "security" / "ipcontroller-client.json"
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.cmd("start"), stdout=self.log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        deadline = t0 + timeout
        while True:
            try:
                json.loads(cfile.read_text())
                break
            except (OSError, ValueError):
                pass
            self.check(deadline)
            time.sleep(0.005)
        self.rc = ipp.Client(str(cfile), timeout=timeout)
        while len(self.rc.ids) < self.n:
            self.check(deadline)
            time.sleep(0.005)
        registered = time.monotonic() - t0
        self.rc[:].apply_sync(noop)
        first = time.monotonic() - t0
        return registered, first

    def check(self, deadline):
        if self.proc.poll() is not None or time.monotonic() > deadline:
            self.log.flush()
            raise RuntimeError(f"{self.kind} n={self.n} did not start:\n" + (self.ipdir / "cluster.log").read_text())

    def groups(self):
        """(controller pids, engine pids: everything else the launcher started)."""
        tree = descendants(self.proc.pid)
        ctl = [p for p in tree if program(p) == "controller"]
        ctl_tree = set(ctl)
        for p in ctl:
            ctl_tree.update(descendants(p))
        return sorted(ctl_tree), [p for p in tree if p not in ctl_tree]

    def engine_procs(self, nannies=True):
        """The engine processes with (or without) what they started (nannies), not the launcher's
        helpers such as mpiexec: for PSS per engine and per-rank CPU."""
        eng = [p for p in self.groups()[1] if program(p) == "engine"]
        if nannies:
            eng = sorted({q for p in eng for q in (p, *descendants(p))})
        return eng

    def stop(self, timeout=60):
        """Stop as a user does; seconds until every process of the cluster is gone."""
        if self.rc is not None:
            self.rc.close()
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        t0 = time.monotonic()
        subprocess.run(self.cmd("stop"), stdout=self.log, stderr=subprocess.STDOUT, env=self.env, timeout=timeout)
        deadline = t0 + timeout
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            try:
                self.proc.wait(0.002)
            except subprocess.TimeoutExpired:
                pass
        took = time.monotonic() - t0
        self.kill()
        return took

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.log.close()


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def median_rtt(fn, n):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def with_cpu(stack, n_tasks, fn):
    """Run fn(); return (wall s, controller / engine / client CPU µs per task)."""
    ctl, eng = stack.groups()
    c0, e0, k0 = thread_times(ctl), thread_times(eng), time.process_time()
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    per = lambda d: d / n_tasks * 1e6  # noqa: E731
    return (wall, per(cpu_between(c0, thread_times(ctl))), per(cpu_between(e0, thread_times(eng))),
            per(time.process_time() - k0))


def workloads(stack, a, res):
    import numpy as np

    rc = stack.rc
    dv, lv, view = rc[0], rc.load_balanced_view(), rc[:]
    for _ in range(20):
        dv.apply_sync(noop)
        lv.apply_sync(noop)
    res["direct_rtt_ms"] = median_rtt(lambda: dv.apply_sync(noop), a.direct) * 1e3
    res["lb_rtt_ms"] = median_rtt(lambda: lv.apply_sync(noop), a.direct) * 1e3
    for name, size, count in (("noop", 0, a.tasks), ("10k", 10_000, a.tasks), ("1m", 1_000_000, a.big)):
        arg = np.ones(size, dtype=np.uint8) if size else None
        args = (arg,) if size else ()
        for ar in [lv.apply_async(noop, *args) for _ in range(10)]:
            ar.get(timeout=120)

        def run():
            for ar in [lv.apply_async(noop, *args) for _ in range(count)]:
                ar.get(timeout=300)

        wall, c, e, k = with_cpu(stack, count, run)
        res[f"{name}_tasks_s"] = count / wall
        res[f"{name}_ctl_us"], res[f"{name}_eng_us"], res[f"{name}_client_us"] = c, e, k
    # before the first execute_request: rpar builds its IPython shell only when one needs it
    res["pss_engine_apply_mib"] = pss_kib(stack.engine_procs()) / stack.n / 1024
    view.execute("a = 1", block=True)
    res["execute_all_ms"] = median_rtt(lambda: view.execute("a = 1", block=True), a.direct // 3) * 1e3
    mib = np.ones(1 << 20, dtype=np.uint8)
    view.push({"x": mib}, block=True)
    res["push_1mib_ms"] = median_rtt(lambda: view.push({"x": mib}, block=True), a.push) * 1e3
    res["pull_1mib_ms"] = median_rtt(lambda: view.pull("x", block=True), a.push) * 1e3
    del mib
    view.execute("x = None", block=True)
    time.sleep(0.5)
    ctl, _ = stack.groups()
    res["pss_engine_mib"] = pss_kib(stack.engine_procs()) / stack.n / 1024
    # rpar's rank 0 relays every big frame and keeps more of the heap (rpar_core::malloc)
    res["pss_engine_max_mib"] = max(pss_kib([p]) for p in stack.engine_procs()) / 1024
    res["pss_controller_mib"] = pss_kib(ctl) / 1024


def run_kind(kind, a, workdir):
    res = {}
    for i, n in enumerate(a.sizes):
        s = Stack(kind, n, workdir)
        try:
            res[f"reg_{n}_s"], res[f"first_{n}_s"] = s.start()
            if i == 0:
                workloads(s, a, res)
        except BaseException:
            s.kill()
            raise
        res[f"stop_{n}_s"] = s.stop()
        print(f"# {kind} n={n} done", flush=True)
    return res


def hop(a, workdir, kind, doorbell):
    """rc[rank 0] vs rc[last rank] round trip and idle CPU per rank, rpar, 4 ranks."""
    env = {} if doorbell else {"RPAR_ENGINE_DOORBELL": "0"}
    s = Stack(kind, a.hop_ranks, workdir, env)
    out = {}
    try:
        s.start()
        ranks = {eid: s.rc[eid].apply_sync(mpi_rank) for eid in s.rc.ids}
        by_rank = {r: e for e, r in ranks.items()}
        first, last = s.rc[by_rank[0]], s.rc[by_rank[a.hop_ranks - 1]]
        for _ in range(20):
            first.apply_sync(noop)
            last.apply_sync(noop)
        # in turn, so both see the same load
        t0, t1 = alternating_medians([lambda: first.apply_sync(noop), lambda: last.apply_sync(noop)], a.hop)
        out["rank0"], out[f"rank{a.hop_ranks - 1}"] = t0 * 1e3, t1 * 1e3
        time.sleep(1.0)
        procs = s.engine_procs(nannies=False)
        c0 = {p: cpu_seconds([p]) for p in procs}
        t0 = time.monotonic()
        time.sleep(a.idle)
        dt = time.monotonic() - t0
        out["idle_pct"] = max((cpu_seconds([p]) - c0[p]) / dt * 100 for p in procs) if procs else float("nan")
    except BaseException:
        s.kill()
        raise
    s.stop()
    return out


ROWS = [
    ("reg_{n}_s", "n={n}: start -> all registered (s)"),
    ("first_{n}_s", "n={n}: start -> first result on all (s)"),
    ("stop_{n}_s", "n={n}: stop -> all processes gone (s)"),
    ("direct_rtt_ms", "direct apply_sync round trip, median (ms)"),
    ("lb_rtt_ms", "load-balanced apply_sync round trip, median (ms)"),
    ("noop_tasks_s", "load-balanced tasks/s, no-op"),
    ("10k_tasks_s", "load-balanced tasks/s, 10 KB argument"),
    ("1m_tasks_s", "load-balanced tasks/s, 1 MB argument"),
    ("noop_ctl_us", "controller CPU per no-op task (µs)"),
    ("10k_ctl_us", "controller CPU per 10 KB task (µs)"),
    ("1m_ctl_us", "controller CPU per 1 MB task (µs)"),
    ("noop_eng_us", "engine CPU per no-op task (µs)"),
    ("1m_eng_us", "engine CPU per 1 MB task (µs)"),
    ("noop_client_us", "client CPU per no-op task (µs)"),
    ("1m_client_us", "client CPU per 1 MB task (µs)"),
    ("execute_all_ms", "dview.execute on all, median (ms)"),
    ("push_1mib_ms", "push 1 MiB to all, median (ms)"),
    ("pull_1mib_ms", "pull 1 MiB from all, median (ms)"),
    ("pss_engine_apply_mib", "PSS per engine after apply tasks only (MiB)"),
    ("pss_engine_mib", "PSS per engine after execute, push, pull (MiB)"),
    ("pss_engine_max_mib", "PSS of the largest engine after execute, push, pull (MiB)"),
    ("pss_controller_mib", "PSS of the controller (MiB)"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4,16", help="engine counts (workloads at the first; default 4,16)")
    ap.add_argument("--tasks", type=int, default=600, help="no-op and 10 KB tasks per workload")
    ap.add_argument("--big", type=int, default=200, help="1 MB tasks")
    ap.add_argument("--direct", type=int, default=300, help="round trips per latency figure")
    ap.add_argument("--push", type=int, default=20, help="push/pull repetitions")
    ap.add_argument("--hop", type=int, default=300, help="round trips per MPI-hop figure (0: skip)")
    ap.add_argument("--hop-ranks", type=int, default=4)
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measurement per rank")
    ap.add_argument("--only", choices=["rpar", "ipp"], help="one kind only")
    ap.add_argument("--base", type=Path, help="also run the rpar binaries in this directory (kind 'base', e.g. "
                    "a build of main), for before/after figures in the same run")
    ap.add_argument("--quick", action="store_true", help="N = 4 only, a third of the work")
    ap.add_argument("--hop-only", action="store_true", help="only the MPI hop figures")
    a = ap.parse_args()
    if a.quick:
        a.sizes, a.tasks, a.big, a.direct, a.push, a.hop, a.idle = "4", 200, 60, 100, 8, 100, 5.0
    a.sizes = [int(x) for x in a.sizes.split(",")]
    for b in ("rpar", "rpar-controller", "rpar-engine"):
        if not (BIN / b).exists():
            sys.exit(f"{BIN / b} is missing: cargo build --release (or set RPAR_BIN_DIR)")
    kinds = [a.only] if a.only else ["rpar", "ipp"]
    if a.base:
        BIN_OF["base"] = a.base
        kinds.insert(1, "base")
    results = {}
    with tempfile.TemporaryDirectory(prefix="stack_bench_") as wd:
        for kind in kinds:
            results[kind] = {} if a.hop_only else run_kind(kind, a, wd)
        hops = {}
        if a.hop:
            for kind in [k for k in kinds if k != "ipp"]:
                for doorbell in (True, False):
                    hops[(kind, doorbell)] = hop(a, wd, kind, doorbell)
    ratio = "ipp" in kinds and len(kinds) > 1
    if a.hop_only:
        ROWS.clear()
    print(f"\n{'':52} " + " ".join(f"{k:>10}" for k in kinds) + ("  rpar/ipp" if ratio else "")
          + ("  base/ipp" if ratio and "base" in kinds else ""))
    for key, label in ROWS:
        for n in (a.sizes if "{n}" in key else [None]):
            k = key.format(n=n)
            vals = [results[kind].get(k, float("nan")) for kind in kinds]
            line = f"{label.format(n=n):52} " + " ".join(f"{v:10.3f}" if v < 100 else f"{v:10.0f}" for v in vals)
            if ratio and vals[-1]:
                line += "".join(f"  {v / vals[-1]:8.2f}" for v in vals[:-1])
            print(line)
    for (kind, doorbell), h in hops.items():
        last = a.hop_ranks - 1
        what = "doorbells" if doorbell else "fallback (RPAR_ENGINE_DOORBELL=0)"
        print(f"{kind} MPI hop, {what}: rank 0 {h['rank0']:.3f} ms, rank {last} {h[f'rank{last}']:.3f} ms "
              f"(+{h[f'rank{last}'] - h['rank0']:.3f} ms); idle CPU per rank (max) {h['idle_pct']:.2f} %")
    print(f"\nbinaries: {BIN}; targets (issue 9): 1 MB >= 1.5x, no-op >= 3x, direct >= 2x, first result on 16 "
          ">= 6x sooner, controller <= 80 µs and engine <= 150 µs per no-op task, PSS/engine <= 25 MB, "
          "hop <= +0.15 ms, idle <= 0.5 %")


if __name__ == "__main__":
    main()
