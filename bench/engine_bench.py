#!/usr/bin/env python
"""rpar-engine vs Python ipengine, same controller (Python ipcontroller) and client.

Prints, for each engine kind, and the ratio rpar / python:
  * time from `mpiexec` to all engines registered, and to the first result from every engine
    (a direct apply on all, sent as soon as they are registered), for 4 and 16 ranks;
  * engine CPU time per engine until that first result;
  * engine CPU time per no-op task (utime+stime of every process under mpiexec, nannies included);
  * memory per engine (sum of PSS from /proc/<pid>/smaps_rollup / N, after the first result).

Usage: . ci/env.sh && python bench/engine_bench.py [--tasks 400] [--sizes 4,16]
       [--rpar-engine PATH] [--kinds rpar,python]   (another rpar-engine build, e.g. a baseline)
No assertions: numbers only.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_seconds, descendants, pss_kib

ROOT = Path(__file__).resolve().parent.parent


RPAR_ENGINE = ROOT / "target/debug/rpar-engine"


def engine_cmd(kind, n, profile_dir):
    if kind == "rpar":
        return ["mpiexec", "-n", str(n), str(RPAR_ENGINE), f"--profile-dir={profile_dir}"]
    return ["mpiexec", "-n", str(n), sys.executable, "-m", "ipyparallel.engine", "--mpi",
            f"--profile-dir={profile_dir}"]


def run(kind, n, tasks, workdir):
    import ipyparallel as ipp

    prof = Path(workdir) / f"profile_{kind}_{n}"
    ctl = subprocess.Popen(
        [sys.executable, "-m", "ipyparallel.controller", f"--profile-dir={prof}", "--ip=127.0.0.1", "--ping=1000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        cfile = prof / "security" / "ipcontroller-client.json"
        while not (prof / "security" / "ipcontroller-engine.json").exists():
            time.sleep(0.05)
        rc = ipp.Client(str(cfile), timeout=30)
        t0 = time.monotonic()
        job = subprocess.Popen(engine_cmd(kind, n, prof), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
        rc.wait_for_engines(n, timeout=300)
        startup = time.monotonic() - t0
        rc[:].apply_sync(os.getpid)
        first = time.monotonic() - t0
        # CPU the engines spent to get there (load-independent, unlike the times above)
        cpu_first = cpu_seconds(descendants(job.pid)) / n
        time.sleep(1.0)
        pids = descendants(job.pid)
        mem = pss_kib(pids) / n
        lb = rc.load_balanced_view()
        lb.apply_sync(lambda: None)
        c0 = cpu_seconds(pids)
        ars = [lb.apply_async(lambda: None) for _ in range(tasks)]
        for a in ars:
            a.get(timeout=120)
        cpu = (cpu_seconds(pids) - c0) / tasks
        rc.shutdown(block=True)
        try:
            job.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
        rc.close()
        return {"startup_s": startup, "first_result_s": first,
                "cpu_s_per_engine_to_first_result": cpu_first, "cpu_ms_per_task": cpu * 1000, "pss_mib_per_engine": mem / 1024}
    finally:
        ctl.send_signal(signal.SIGTERM)
        ctl.wait(20)


def main():
    global RPAR_ENGINE
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=400)
    ap.add_argument("--sizes", default="4,16")
    ap.add_argument("--rpar-engine", default=str(RPAR_ENGINE))
    ap.add_argument("--kinds", default="rpar,python")
    a = ap.parse_args()
    RPAR_ENGINE = Path(a.rpar_engine)
    kinds = a.kinds.split(",")
    if not RPAR_ENGINE.exists():
        sys.exit("build rpar-engine first: cargo build -p rpar-engine")
    if shutil.which("mpiexec") is None:
        sys.exit("mpiexec not found")
    sizes = [int(s) for s in a.sizes.split(",")]
    with tempfile.TemporaryDirectory() as d:
        results = {}
        for n in sizes:
            for kind in kinds:
                results[(kind, n)] = run(kind, n, a.tasks if n == sizes[0] else a.tasks // 4, d)
                print(f"{kind:6} n={n:3}: " + ", ".join(f"{k}={v:.3f}" for k, v in results[(kind, n)].items()),
                      flush=True)
        if kinds != ["rpar", "python"]:
            return
        print("\nratios rpar / python (lower is better for rpar):")
        for n in sizes:
            r, p = results[("rpar", n)], results[("python", n)]
            print(f"  n={n:3}: " + ", ".join(f"{k}={r[k] / p[k]:.2f}" for k in r if p[k]))


if __name__ == "__main__":
    main()
