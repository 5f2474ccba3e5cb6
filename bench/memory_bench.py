#!/usr/bin/env python
"""Controller memory after many tiny tasks (issue 11: RSS grew 0.34-0.54 KB per task forever).

One rpar-controller with its default task database (DictDB), rpar-loadgen's simulated engines (or,
with --python, real Python ipengines), and `rpar-loadclient` (the Rust load-balanced client, which
keeps a window of `apply_request`s in flight and checks every reply). Prints the controller's RSS
after 10 k tasks and every 100 k after that, the growth between 10 k and the end (acceptance:
within 64 MB after 1 M tasks), and the RSS after the client's `purge_results('all')`.

Usage:  . ci/env.sh && cargo build --release -p rpar-controller -p rpar-loadgen
        python bench/memory_bench.py [--tasks 1000000] [--engines 8] [--python]
Uses $RPAR_BIN_DIR (default target/release if built there, else target/debug). No assertions.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if "RPAR_BIN_DIR" not in os.environ:
    rel = ROOT / "target" / "release"
    os.environ["RPAR_BIN_DIR"] = str(rel if (rel / "rpar-loadclient").exists() else ROOT / "target" / "debug")
sys.path.insert(0, str(ROOT / "tests"))

from conftest import Controller, Engines  # noqa: E402


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--engines", type=int, default=8)
    ap.add_argument("--python", action="store_true", help="Python ipengines instead of rpar-loadgen's")
    ap.add_argument("--window", type=int, default=1000)
    a = ap.parse_args()
    bin_dir = Path(os.environ["RPAR_BIN_DIR"])
    print(f"binaries: {bin_dir}; load average {os.getloadavg()[0]:.2f}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        ipdir = Path(tmp)
        os.environ["IPYTHONDIR"] = str(ipdir)
        ctl = Controller(ipdir / "profile_default", ["--ip=127.0.0.1", "--ping=1000"])
        if a.python:
            gen = Engines(ctl, a.engines)
        else:
            gen = subprocess.Popen(
                [str(bin_dir / "rpar-loadgen"), "--engines", str(a.engines), f"--profile-dir={ctl.profile_dir}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            pid = ctl.proc.pid
            print(f"controller RSS at start {rss_mib(pid):.1f} MiB", flush=True)
            client = subprocess.Popen(
                [str(bin_dir / "rpar-loadclient"), f"--tasks={a.tasks}", f"--window={a.window}",
                 f"--min-engines={a.engines}", "--progress=10000", "--json", "--timeout=120",
                 f"--file={ctl.file('client')}"],
                stdout=subprocess.PIPE, text=True)
            base = None
            summary = None
            for line in client.stdout:
                if line.startswith("progress "):
                    done, secs = int(line.split()[1]), float(line.split()[2])
                    if done == 10_000 or done % 100_000 == 0:
                        r = rss_mib(pid)
                        if base is None:
                            base = r
                        print(f"{done:9d} tasks  controller RSS {r:8.1f} MiB  (+{r - base:6.1f})  "
                              f"{done / secs:7.0f} tasks/s", flush=True)
                elif line.startswith("{"):
                    summary = json.loads(line)
            client.wait()
            end = rss_mib(pid)
            print(f"client: {summary}")
            if base is not None:
                print(f"growth from 10 k to {a.tasks} tasks: {end - base:.1f} MiB "
                      f"({(end - base) * 1024 * 1024 / max(1, a.tasks - 10_000):.1f} bytes per task)")
            rc = ctl.client()
            rc.purge_results("all")
            rc.close()
            time.sleep(1)
            print(f"after purge_results('all'): controller RSS {rss_mib(pid):.1f} MiB")
        finally:
            if a.python:
                gen.stop()
            else:
                gen.terminate()
                gen.wait(10)
            ctl.stop()


if __name__ == "__main__":
    main()
