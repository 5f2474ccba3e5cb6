#!/usr/bin/env python
"""Controller memory after many tiny tasks (issue 11: RSS grew 0.34-0.54 KB per task forever).

One rpar-controller with its default task database (DictDB), real Python ipengines (or, with
--loadgen, rpar-loadgen's simulated ones), and a raw client (pyzmq + jupyter_client's Session, the
wire format the ipyparallel client speaks) that keeps a window of load-balanced `apply_request`s
in flight. Prints the controller's RSS after 10 k tasks and every 100 k after that, then the
growth between 10 k and the end (acceptance: within 64 MB after 1 M tasks).

Usage:  . ci/env.sh && cargo build -p rpar-controller -p rpar-loadgen
        python bench/memory_bench.py [--tasks 1000000] [--engines 8]
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
    os.environ["RPAR_BIN_DIR"] = str(rel if (rel / "rpar-controller").exists() else ROOT / "target" / "debug")
sys.path.insert(0, str(ROOT / "tests"))

from conftest import Controller, Engines, wait_for  # noqa: E402


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--engines", type=int, default=4)
    ap.add_argument("--loadgen", action="store_true", help="rpar-loadgen engines instead of Python ipengines")
    ap.add_argument("--window", type=int, default=2000)
    a = ap.parse_args()

    import zmq
    from jupyter_client.session import Session

    with tempfile.TemporaryDirectory() as tmp:
        ipdir = Path(tmp)
        os.environ["IPYTHONDIR"] = str(ipdir)
        ctl = Controller(ipdir / "profile_default", ["--ip=127.0.0.1", "--ping=1000"])
        if a.loadgen:
            gen = subprocess.Popen(
                [str(Path(os.environ["RPAR_BIN_DIR"]) / "rpar-loadgen"), "--engines", str(a.engines),
                 f"--profile-dir={ctl.profile_dir}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            gen = Engines(ctl, a.engines)
        try:
            info = json.loads(ctl.file("client").read_text())
            s = Session(key=info["key"].encode(), signature_scheme=info["signature_scheme"])
            ctx = zmq.Context()
            q = ctx.socket(zmq.DEALER)
            q.connect(f"{info['interface']}:{info['registration']}")

            def engines():
                s.send(q, "connection_request", {})
                if q.poll(2000):
                    _, m = s.recv(q)
                    return len(m["content"].get("engines", {}))
                return 0

            wait_for(lambda: engines() >= a.engines, timeout=120, what="loadgen engines registered")
            t = ctx.socket(zmq.DEALER)
            t.connect(f"{info['interface']}:{info['task']}")
            md = {"after": [], "follow": [], "timeout": None, "targets": [], "retries": 0}
            sent = done = 0
            marks = [10_000] + list(range(100_000, a.tasks + 1, 100_000))
            base = None
            t0 = time.monotonic()
            while done < a.tasks:
                while sent < a.tasks and sent - done < a.window:
                    s.send(t, "apply_request", {}, metadata=md, buffers=[b"f", b"a", b"k"])
                    sent += 1
                while t.poll(0 if sent - done < a.window and sent < a.tasks else 5000):
                    t.recv_multipart()
                    done += 1
                    if marks and done == marks[0]:
                        marks.pop(0)
                        r = rss_mib(ctl.proc.pid)
                        if base is None:
                            base = r
                        print(f"{done:9d} tasks  controller RSS {r:8.1f} MiB  "
                              f"(+{r - base:6.1f})  {done / (time.monotonic() - t0):7.0f} tasks/s",
                              flush=True)
            end = rss_mib(ctl.proc.pid)
            print(f"growth from 10 k to {a.tasks} tasks: {end - base:.1f} MiB "
                  f"({(end - base) * 1024 * 1024 / max(1, a.tasks - 10_000):.1f} bytes per task)")
        finally:
            if a.loadgen:
                gen.terminate()
                gen.wait(10)
            else:
                gen.stop()
            ctl.stop()


if __name__ == "__main__":
    main()
