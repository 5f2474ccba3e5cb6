#!/usr/bin/env python
"""The controller's own capacity, with no Python client (issue 9): `rpar-loadclient` (a Rust
load-balanced client) submits no-op tasks and counts every reply, against

  (a) rpar-controller + rpar-loadgen's simulated engines (no Python anywhere; --sim engine counts),
  (b) rpar-controller + P Python ipengines,
  (c) Python ipcontroller + the same P Python ipengines,

printing tasks/s and the CPU per task of the controller (utime+stime of the controller and, for
ipcontroller, its scheduler processes, from /proc/PID/stat), of the engines and of the client, and
the rpar/ipyparallel ratios of (b) against (c). Run it on release builds, on a machine as quiet as you can find (the load average is
printed with the table).

Usage: . ci/env.sh && cargo build --release -p rpar-controller -p rpar-loadgen
       python bench/capacity_bench.py [--sim 64,1024] [--sim-tasks 200000] [--python 4]
       [--python-tasks 5000] [--window 1024] [--bin-dir target/release]
No assertions: numbers only.
"""

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from common import cpu_seconds, descendants

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def controller_pids(ctl):
    return [ctl.proc.pid] + descendants(ctl.proc.pid)


def run_client(bin_dir, ctl, tasks, window, engines, engine_pids=()):
    """rpar-loadclient against `ctl`; its JSON summary with the CPU seconds of the controller,
    of the engines and of the client during the measured run."""
    cmd = [str(bin_dir / "rpar-loadclient"), f"--tasks={tasks}", f"--window={window}",
           f"--min-engines={engines}", "--timeout=120", "--json", f"--file={ctl.file('client')}"]
    # warm-up: the first tasks pay for connections and the schedulers' first engine lists
    subprocess.run(cmd[:1] + [f"--tasks={min(tasks, 500)}"] + cmd[2:], capture_output=True, check=True)
    pids = controller_pids(ctl)
    engine_pids = list(engine_pids)
    cpu0, eng0 = cpu_seconds(pids), cpu_seconds(engine_pids)
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True)
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu1, eng1 = cpu_seconds(pids), cpu_seconds(engine_pids)
    if out.returncode != 0:
        raise SystemExit(f"rpar-loadclient failed:\n{out.stdout}\n{out.stderr}\n{ctl.output()[-3000:]}")
    r = json.loads(out.stdout.splitlines()[-1])
    r["ctl_cpu_s"] = cpu1 - cpu0
    r["engine_cpu_s"] = eng1 - eng0
    r["client_cpu_s"] = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    return r


def row(name, r):
    n = max(1, r["replies"])
    per_task = r["ctl_cpu_s"] / n * 1e6
    ok = "all ok" if r["ok"] == r["submitted"] == r["replies"] else f"{r['ok']}/{r['submitted']} ok"
    print(f"{name:46s} {r['replies']:8d} {r['tasks_per_s']:9.0f} {per_task:9.1f} "
          f"{r['engine_cpu_s'] / n * 1e6:9.1f} {r['client_cpu_s'] / n * 1e6:9.1f}   {ok}", flush=True)
    return r["tasks_per_s"], per_task


def sim_run(bin_dir, n, tasks, window, workdir):
    from conftest import Controller

    ctl = Controller(workdir / f"profile_sim{n}", ["--ip=127.0.0.1"])
    jobs = max(1, min(16, n // 64))
    gen = subprocess.Popen([str(bin_dir / "rpar-loadgen"), f"--engines={n}", f"--jobs={jobs}",
                            f"--profile-dir={ctl.profile_dir}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return run_client(bin_dir, ctl, tasks, window, n, [gen.pid])
    finally:
        gen.send_signal(signal.SIGTERM)
        gen.wait(30)
        ctl.stop()


def python_run(bin_dir, kind, p, tasks, window, workdir):
    from conftest import Controller, Engines

    ctl = Controller(workdir / f"profile_{kind}{p}", ["--ip=127.0.0.1"], kind=kind)
    eng = Engines(ctl, p)
    try:
        pids = [q.pid for q in eng.procs]
        return run_client(bin_dir, ctl, tasks, window, p, pids + [d for q in pids for d in descendants(q)])
    finally:
        eng.stop()
        ctl.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sim", default="64,1024", help="simulated engine counts for (a)")
    ap.add_argument("--sim-tasks", type=int, default=200_000)
    ap.add_argument("--python", type=int, default=4, help="Python ipengines for (b) and (c)")
    ap.add_argument("--python-tasks", type=int, default=5000)
    ap.add_argument("--window", type=int, default=1024, help="tasks in flight (the client's window)")
    ap.add_argument("--bin-dir", default=str(ROOT / "target" / "release"))
    a = ap.parse_args()
    bin_dir = Path(a.bin_dir).resolve()
    os.environ["RPAR_BIN_DIR"] = str(bin_dir)  # read by tests/conftest.py when first imported
    for b in ("rpar-controller", "rpar-loadgen", "rpar-loadclient"):
        if not (bin_dir / b).exists():
            raise SystemExit(f"{bin_dir / b} is missing: cargo build --release -p rpar-controller -p rpar-loadgen")
    print(f"binaries: {bin_dir}; load average before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
    print(f"{'':46s} {'tasks':>8s} {'tasks/s':>9s} {'CPU µs per task: controller, engines, client':>30s}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        os.environ["IPYTHONDIR"] = str(workdir)
        for n in [int(x) for x in a.sim.split(",") if x]:
            r = sim_run(bin_dir, n, a.sim_tasks, a.window, workdir)
            row(f"(a) rpar-controller + {n} rpar-loadgen engines", r)
        if a.python > 0:
            w = min(a.window, 64)
            rb = python_run(bin_dir, "rpar", a.python, a.python_tasks, w, workdir)
            tb, cb = row(f"(b) rpar-controller + {a.python} Python ipengines", rb)
            rc = python_run(bin_dir, "ipyparallel", a.python, a.python_tasks, w, workdir)
            tc, cc = row(f"(c) ipcontroller + {a.python} Python ipengines", rc)
            print(f"rpar/ipyparallel with {a.python} Python ipengines: tasks/s {tb / max(tc, 1e-9):.2f}x, "
                  f"controller CPU per task {cb / max(cc, 1e-9):.3f}x ({cc / max(cb, 1e-9):.1f}x less)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
