#!/usr/bin/env python3
"""Task-database benchmark: N tasks each carrying a B-byte argument through a controller with
two real Python engines, for rpar-controller (memory and SQLite backends) and Python
ipyparallel's ipcontroller (same backends, same workload).

Prints, per run: records written per second (tasks whose completed record is in the database,
divided by the wall time from the first submission), the controller's memory (RSS and PSS of
the controller and its child processes, from /proc) at the end and the peak seen while running,
and the database file size for SQLite.

    . ci/env.sh && python bench/db_bench.py                # 2000 x 1 MB, all four runs
    python bench/db_bench.py --tasks 200 --only rpar-memory

Needs target/debug/rpar-controller (or RPAR_BIN_DIR) and the ipyparallel venv.
"""

import argparse
import os
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from conftest import Controller, Engines, connect  # noqa: E402
from util_db import nbytes, tree_memory  # noqa: E402

RUNS = {  # name: (controller kind, arguments)
    "rpar-memory": ("rpar", ["--dictdb"]),
    "rpar-sqlite": ("rpar", ["--sqlitedb", "--SQLiteDB.table=bench"]),
    # The memory DB keeps up to DictDB.size_limit (192 MiB by default) of buffers; a larger limit:
    "rpar-memory-1g": ("rpar", ["--dictdb", "--DictDB.size_limit=1073741824"]),
    "python-memory": ("python", ["--dictdb"]),
    "python-sqlite": ("python", ["--sqlitedb", "--SQLiteDB.table=bench"]),
}


class PeakSampler(threading.Thread):
    def __init__(self, pid, interval=0.2):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_rss = self.peak_pss = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            rss, pss = tree_memory(self.pid)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.stop.wait(self.interval)


def sqlite_completed(path, table):
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(f'SELECT count(*) FROM "{table}" WHERE completed IS NOT NULL').fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def run_one(name, n_tasks, size, window, workdir):
    kind, args = RUNS[name]
    ipdir = Path(workdir) / name
    ipdir.mkdir()
    os.environ["IPYTHONDIR"] = str(ipdir)
    ctl = Controller(ipdir / "profile_default", args + ["--ping=1000"], kind=kind)
    eng = Engines(ctl, 2)
    rc = None
    try:
        rc = connect(ctl, 2, eng)
        lv = rc.load_balanced_view()
        payload = os.urandom(size)
        lv.apply_async(nbytes, b"warm").get(timeout=60)
        base_rss, base_pss = tree_memory(ctl.proc.pid)
        sampler = PeakSampler(ctl.proc.pid)
        sampler.start()
        t0 = time.monotonic()
        pending = []
        ids = []
        for _ in range(n_tasks):
            ar = lv.apply_async(nbytes, payload)
            ids.append(ar.msg_ids[0])
            pending.append(ar)
            if len(pending) >= window:
                pending.pop(0).get(timeout=300)
        for ar in pending:
            ar.get(timeout=300)
        t_client = time.monotonic() - t0
        db = ctl.profile_dir / "tasks.db"
        deadline = time.monotonic() + 300
        if "sqlite" in name:
            # Committed to the file (Python's SQLiteDB commits every 2 s).
            while sqlite_completed(db, "bench") < n_tasks + 1 and time.monotonic() < deadline:
                time.sleep(0.05)
        else:
            while time.monotonic() < deadline:
                try:
                    st = rc.result_status(ids, status_only=True)
                except Exception:
                    # The hub may not have recorded the newest request yet.
                    st = {"completed": []}
                if len(st["completed"]) == n_tasks:
                    break
                time.sleep(0.05)
        t_db = time.monotonic() - t0
        sampler.stop.set()
        sampler.join()
        end_rss, end_pss = tree_memory(ctl.proc.pid)
        return {
            "run": name,
            "tasks": n_tasks,
            "client_s": t_client,
            "records_per_s": n_tasks / t_db,
            "base_rss_mb": base_rss / 2**20,
            "end_rss_mb": end_rss / 2**20,
            "end_pss_mb": end_pss / 2**20,
            "peak_rss_mb": sampler.peak_rss / 2**20,
            "peak_pss_mb": sampler.peak_pss / 2**20,
            "db_file_mb": (db.stat().st_size / 2**20) if db.exists() else None,
        }
    finally:
        if rc is not None:
            rc.close()
        eng.stop()
        ctl.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--size", type=int, default=1 << 20, help="argument bytes per task")
    ap.add_argument("--window", type=int, default=64, help="most tasks outstanding")
    ap.add_argument("--only", action="append", choices=sorted(RUNS), help="run only these")
    ap.add_argument("--workdir", help="keep profiles here (default: a temp dir, removed)")
    a = ap.parse_args()
    names = a.only or [n for n in RUNS if n != "rpar-memory-1g"]
    with tempfile.TemporaryDirectory(prefix="db_bench_", dir=a.workdir) as wd:
        rows = []
        for name in names:
            print(f"# {name}: {a.tasks} tasks x {a.size} bytes ...", flush=True)
            rows.append(run_one(name, a.tasks, a.size, a.window, wd))
            r = rows[-1]
            print(
                f"{r['run']:<14} {r['records_per_s']:8.1f} rec/s  client {r['client_s']:6.1f}s  "
                f"RSS end {r['end_rss_mb']:7.1f} MB (peak {r['peak_rss_mb']:7.1f}, idle {r['base_rss_mb']:6.1f})  "
                f"PSS end {r['end_pss_mb']:7.1f} MB (peak {r['peak_pss_mb']:7.1f})"
                + (f"  file {r['db_file_mb']:.0f} MB" if r["db_file_mb"] is not None else ""),
                flush=True,
            )


if __name__ == "__main__":
    main()
