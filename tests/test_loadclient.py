"""`rpar-loadclient`, the Rust load-balanced client of the capacity benchmark
(bench/capacity_bench.py): real controllers (rpar-controller and the Python ipcontroller), real
engines (`rpar-loadgen`'s simulated ones and Python ipengines), every task's reply counted and
every computed result checked (task i is `pow(i % 16, 2)` on the engine)."""

import json
import signal
import subprocess

import pytest

from conftest import rpar_bin


def loadclient(controller, tasks, window, min_engines):
    out = subprocess.run(
        [rpar_bin("rpar-loadclient"), f"--tasks={tasks}", f"--window={window}",
         f"--min-engines={min_engines}", "--timeout=60", "--json",
         f"--file={controller.file('client')}"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr + controller.output()
    return json.loads(out.stdout)


def test_loadclient_gets_every_reply_from_loadgen_engines(make_controller):
    ctl = make_controller("--ip=127.0.0.1")
    log = open(ctl.profile_dir.parent / "loadgen.log", "w")
    lg = subprocess.Popen(
        [rpar_bin("rpar-loadgen"), "--engines=8", "--jobs=2", f"--profile-dir={ctl.profile_dir}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        r = loadclient(ctl, 2000, 64, 8)
        assert r["engines"] == 8
        assert (r["submitted"], r["replies"], r["ok"]) == (2000, 2000, 2000), r
        # simulated engines answer None to every apply_request
        assert (r["none"], r["wrong"], r["errors"], r["dropped"]) == (2000, 0, {}, 0), r
        lg.send_signal(signal.SIGTERM)
        assert lg.wait(30) == 128 + signal.SIGTERM
    finally:
        if lg.poll() is None:
            lg.kill()
            lg.wait()
        log.close()


@pytest.mark.parametrize("kind", ["rpar", "ipyparallel"])
def test_loadclient_results_from_python_engines(make_controller, make_engines, kind):
    ctl = make_controller("--ip=127.0.0.1", kind=kind)
    make_engines(ctl, 2)
    r = loadclient(ctl, 200, 16, 2)
    assert (r["submitted"], r["replies"], r["ok"]) == (200, 200, 200), r
    # every pow(i % 16, 2) was computed by an engine and came back right
    assert (r["correct"], r["none"], r["wrong"], r["errors"]) == (200, 0, 0, {}), r
