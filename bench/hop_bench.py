#!/usr/bin/env python
"""The MPI hop, both engine transports: `rc[e].apply_sync(noop)` round trip (median; the two
engines are called in turn) for the engine on rank 0 (no MPI hop) and on the last rank (relayed
over MPI) of one job, with doorbells (the default on one node) and with the cross-node fallback
forced by `RPAR_ENGINE_DOORBELL=0`, and the idle CPU of each rank (% of a core) over --idle
seconds.

Goal (issue 9): last rank within 0.15 ms of rank 0; idle CPU per rank <= 0.5 %.

Usage: . ci/env.sh && python bench/hop_bench.py [--n 300] [--ranks 4] [--idle 10]
       [--bin-dir target/debug] [--transports native,compat] [--doorbells both|yes|no]
No assertions: numbers only.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import alternating_medians, cpu_seconds, descendants
from scale_bench import Controller

ROOT = Path(__file__).resolve().parent.parent


def noop():
    return None


def mpi_rank():
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_rank()


def engine_pids(job):
    return [p for p in descendants(job.pid)
            if Path(f"/proc/{p}/cmdline").exists() and b"rpar-engine" in Path(f"/proc/{p}/cmdline").read_bytes()]


def one(a, transport, doorbell, workdir):
    prof = Path(workdir) / f"profile_hop_{transport}_{int(doorbell)}"
    ctl = Controller(a.bin_dir, prof, ping=3000)
    env = dict(os.environ)
    if not doorbell:
        env["RPAR_ENGINE_DOORBELL"] = "0"
    job = None
    try:
        rc = ctl.client()
        cmd = ["mpiexec", "-n", str(a.ranks), str(a.bin_dir / "rpar-engine"), f"--profile-dir={prof}",
               f"--transport={transport}", "--no-nanny"]
        log = open(os.environ["HOPLOG"], "a") if os.environ.get("HOPLOG") else subprocess.DEVNULL
        job = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
        rc.wait_for_engines(a.ranks, timeout=120)
        by_rank = {rc[e].apply_sync(mpi_rank): e for e in rc.ids}
        out = {}
        first, last = rc[by_rank[0]], rc[by_rank[a.ranks - 1]]
        for _ in range(20):
            first.apply_sync(noop)
            last.apply_sync(noop)
        # in turn, so both see the same load
        t0, t1 = alternating_medians([lambda: first.apply_sync(noop), lambda: last.apply_sync(noop)], a.n)
        out["rank0"], out[f"rank{a.ranks - 1}"] = t0 * 1e3, t1 * 1e3
        time.sleep(1.0)
        procs = engine_pids(job)
        c0 = {p: cpu_seconds([p]) for p in procs}
        t0 = time.monotonic()
        time.sleep(a.idle)
        dt = time.monotonic() - t0
        idle = {p: (cpu_seconds([p]) - c0[p]) / dt * 100 for p in procs}
        out["idle_max_pct"] = max(idle.values())
        out["idle_all"] = " ".join(f"{idle[p]:.2f}" for p in sorted(procs))
        rc.shutdown(block=True)
        job.wait(60)
        rc.close()
        return out
    finally:
        if job is not None and job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
        ctl.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="round trips per figure")
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--bin-dir", type=Path, default=ROOT / "target" / "debug")
    ap.add_argument("--transports", default="native,compat")
    ap.add_argument("--doorbells", choices=["both", "yes", "no"], default="both")
    a = ap.parse_args()
    if not (a.bin_dir / "rpar-engine").exists():
        sys.exit(f"{a.bin_dir / 'rpar-engine'} is missing: cargo build")
    last = a.ranks - 1
    print(f"{a.bin_dir.name} build, {a.ranks} ranks, median of {a.n}, idle over {a.idle:.0f} s")
    print(f"{'transport':10} {'doorbells':10} {'rank 0 ms':>10} {f'rank {last} ms':>10} {'hop ms':>8} "
          f"{'idle max %':>10}  idle % of each engine process (pid order)")
    with tempfile.TemporaryDirectory(prefix="hop_bench_") as wd:
        for t in a.transports.split(","):
            for doorbell in {"both": (True, False), "yes": (True,), "no": (False,)}[a.doorbells]:
                r = one(a, t, doorbell, wd)
                hop = r[f"rank{last}"] - r["rank0"]
                print(f"{t:10} {'yes' if doorbell else 'no (=0)':10} {r['rank0']:10.3f} {r[f'rank{last}']:10.3f} "
                      f"{hop:8.3f} {r['idle_max_pct']:10.2f}  {r['idle_all']}", flush=True)


if __name__ == "__main__":
    main()
