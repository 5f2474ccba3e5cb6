#!/usr/bin/env python
"""Scale of rpar-controller with the native engine transport.

Part 1, `rpar-loadgen` (simulated MPI jobs, no MPI, no Python engines) with N engines in J jobs:
  * start → the client sees all N engines (loadgen start to `wait_for_engines` returning);
  * controller CPU (% of one core) while idle and heartbeating, over --idle seconds;
  * controller RSS;
  * `rc[:].apply_sync(noop)` on all engines (wall time, and the controller's CPU share of it);
  * `rc.queue_status()`.

Part 2, a real `mpiexec -n 8` / `-n 64` rpar-engine job, compat vs native side by side: time to all
registered, `rc[:].apply_sync(noop)`, `dview.execute`, rank 0's and the controller's open
descriptors and TCP connections, controller CPU over the run; with ratios native / compat.

Usage: . ci/env.sh && python bench/scale_bench.py [--engines 1024,4096,16384] [--jobs 1,4,16]
       [--idle 30] [--ranks 8,64] [--skip-mpi] [--bin-dir target/release]
No assertions: numbers only.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_seconds, descendants

ROOT = Path(__file__).resolve().parent.parent


def noop():
    return None


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def tcp_conns(pid):
    out = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if f"pid={pid}," in line)


class Controller:
    def __init__(self, bin_dir, prof, ping=3000):
        self.prof = prof
        self.log = open(prof.parent / f"{prof.name}-controller.log", "w")
        self.proc = subprocess.Popen(
            [str(bin_dir / "rpar-controller"), f"--profile-dir={prof}", "--ip=127.0.0.1", f"--ping={ping}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        while not (prof / "security" / "ipcontroller-engine.json").exists():
            if self.proc.poll() is not None:
                raise SystemExit(f"controller exited: {self.proc.returncode}")
            time.sleep(0.05)

    def client(self):
        import ipyparallel as ipp

        return ipp.Client(str(self.prof / "security" / "ipcontroller-client.json"), timeout=60)

    def cpu(self):
        return cpu_seconds([self.proc.pid])

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def loadgen_run(bin_dir, n, jobs, idle, workdir):
    prof = Path(workdir) / f"profile_lg_{n}_{jobs}"
    ctl = Controller(bin_dir, prof)
    lg = None
    try:
        rc = ctl.client()
        t0, reg_c0 = time.monotonic(), ctl.cpu()
        lg = subprocess.Popen(
            [str(bin_dir / "rpar-loadgen"), "--engines", str(n), "--jobs", str(jobs), f"--profile-dir={prof}",
             "--timeout=300"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        rc.wait_for_engines(n, timeout=600)
        seen = time.monotonic() - t0
        reg_ctl = ctl.cpu() - reg_c0
        # rpar-loadgen's own "registered N engines in J job(s) in X s" (its first line)
        m = re.search(r"in ([0-9.]+) s", lg.stdout.readline())
        lg_reg = float(m.group(1)) if m else float("nan")
        c0, w0 = ctl.cpu(), time.monotonic()
        time.sleep(idle)
        idle_pct = 100 * (ctl.cpu() - c0) / (time.monotonic() - w0)
        rss = rss_mib(ctl.proc.pid)
        c0, w0 = ctl.cpu(), time.monotonic()
        r = rc[:].apply_sync(noop)
        apply_s = time.monotonic() - w0
        apply_ctl = ctl.cpu() - c0
        assert r == [None] * n, "apply on all engines"
        w0 = time.monotonic()
        rc.queue_status()
        qs = time.monotonic() - w0
        rss_after = rss_mib(ctl.proc.pid)
        rc.close()
        return {"seen_s": seen, "lg_reg_s": lg_reg, "reg_ctl_cpu_s": reg_ctl, "idle_cpu_pct": idle_pct,
                "rss_mib": rss, "rss_after_mib": rss_after, "apply_s": apply_s, "apply_ctl_cpu_s": apply_ctl,
                "queue_status_s": qs}
    finally:
        if lg is not None and lg.poll() is None:
            lg.send_signal(signal.SIGTERM)
            try:
                lg.wait(30)
            except subprocess.TimeoutExpired:
                lg.kill()
        ctl.stop()


def mpi_run(bin_dir, transport, n, workdir):
    prof = Path(workdir) / f"profile_mpi_{transport}_{n}"
    ctl = Controller(bin_dir, prof, ping=1000)
    job = None
    try:
        rc = ctl.client()
        c_start = ctl.cpu()
        t0 = time.monotonic()
        cmd = ["mpiexec", "-n", str(n), str(ROOT / "target/debug/rpar-engine"), f"--profile-dir={prof}",
               f"--transport={transport}", "--timeout=300"]
        job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        rc.wait_for_engines(n, timeout=600)
        reg = time.monotonic() - t0
        dv = rc[:]
        dv.apply_sync(noop)  # every shell built
        w0 = time.monotonic()
        dv.apply_sync(noop)
        apply_s = time.monotonic() - w0
        w0 = time.monotonic()
        dv.execute("a = 1", block=True)
        exec_s = time.monotonic() - w0
        pids = descendants(job.pid)
        rank0 = min(
            (p for p in pids if Path(f"/proc/{p}/cmdline").exists()
             and b"rpar-engine" in Path(f"/proc/{p}/cmdline").read_bytes()
             and b"OMPI_COMM_WORLD_RANK=0\0" in Path(f"/proc/{p}/environ").read_bytes()),
            default=None,
        )
        out = {
            "registered_s": reg, "apply_s": apply_s, "execute_s": exec_s,
            "rank0_fds": fds(rank0) if rank0 else 0, "rank0_tcp": tcp_conns(rank0) if rank0 else 0,
            "ctl_fds": fds(ctl.proc.pid), "ctl_cpu_s": ctl.cpu() - c_start,
        }
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
    ap = argparse.ArgumentParser()
    ap.add_argument("--engines", default="1024,4096,16384")
    ap.add_argument("--jobs", default="1,4,16")
    ap.add_argument("--idle", type=float, default=30.0)
    ap.add_argument("--ranks", default="8,64")
    ap.add_argument("--skip-mpi", action="store_true")
    ap.add_argument("--skip-loadgen", action="store_true")
    ap.add_argument("--bin-dir", default=str(ROOT / "target" / "release"))
    a = ap.parse_args()
    bin_dir = Path(a.bin_dir)
    with tempfile.TemporaryDirectory() as workdir:
        if not a.skip_loadgen:
            print(f"rpar-loadgen against rpar-controller ({bin_dir}); idle CPU over {a.idle:.0f} s")
            print("seen s: loadgen start to the Python client seeing all engines; reg s: to rpar-loadgen "
                  "holding every registration reply; reg cpu: the controller's CPU seconds until seen")
            print(f"{'engines':>8} {'jobs':>5} {'seen s':>8} {'reg s':>7} {'reg cpu':>7} {'idle %':>7} "
                  f"{'RSS MiB':>8} {'apply s':>8} {'ctl cpu s':>9} {'qstat s':>8}")
            for n in [int(x) for x in a.engines.split(",")]:
                for j in [int(x) for x in a.jobs.split(",")]:
                    r = loadgen_run(bin_dir, n, j, a.idle, workdir)
                    print(f"{n:>8} {j:>5} {r['seen_s']:>8.2f} {r['lg_reg_s']:>7.2f} {r['reg_ctl_cpu_s']:>7.2f} "
                          f"{r['idle_cpu_pct']:>7.2f} {r['rss_mib']:>8.1f} "
                          f"{r['apply_s']:>8.2f} {r['apply_ctl_cpu_s']:>9.2f} {r['queue_status_s']:>8.3f}",
                          flush=True)
        if not a.skip_mpi:
            print("\nmpiexec rpar-engine (debug build), compat vs native")
            keys = ["registered_s", "apply_s", "execute_s", "rank0_fds", "rank0_tcp", "ctl_fds", "ctl_cpu_s"]
            print(f"{'ranks':>6} {'transport':>9} " + " ".join(f"{k:>12}" for k in keys))
            for n in [int(x) for x in a.ranks.split(",")]:
                res = {t: mpi_run(bin_dir, t, n, workdir) for t in ("compat", "native")}
                for t, r in res.items():
                    print(f"{n:>6} {t:>9} " + " ".join(f"{r[k]:>12.2f}" for k in keys), flush=True)
                ratio = {k: res["native"][k] / res["compat"][k] if res["compat"][k] else float("nan") for k in keys}
                print(f"{n:>6} {'ratio':>9} " + " ".join(f"{ratio[k]:>12.2f}" for k in keys), flush=True)


if __name__ == "__main__":
    sys.exit(main())
