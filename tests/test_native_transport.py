"""The native engine transport: rank 0 of an MPI job holds ONE connection to rpar-controller for
all its engines, registers them in one exchange, and the job has one heartbeat. Driven by the real
ipyparallel Client against real `mpiexec rpar-engine` jobs, a real Python ipengine, the Python
ipcontroller, and `rpar-loadgen`."""

import json
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import rpar_bin, wait_for
from util_engine import EngineJob, rank_of

NATIVE = "native transport: one connection for the job's"


@pytest.fixture
def jobs():
    made = []

    def make(controller, n, args=(), flavour="openmpi"):
        # a tag per job, in its namespace and on its command line (jobs share a profile); the
        # profile's path in it too, so that the same test running elsewhere on the machine
        # (another checkout) never matches this one's processes
        tag = f"job{len(made)}@{controller.profile_dir}"
        args = [f"--IPEngine.startup_command=JOB_TAG = '{tag}'", *args]
        j = EngineJob(flavour, n, controller.profile_dir, args)
        j.marker, j.tag = f"JOB_TAG = '{tag}'", tag
        made.append(j)
        return j

    yield make
    for j in made:
        j.stop()


def client_for(controller, n, *procs, timeout=90):
    rc = controller.client(timeout=20)
    try:
        rc.wait_for_engines(n, timeout=timeout)
    except Exception as e:
        logs = "\n".join(p.output() for p in procs)
        rc.close()
        raise AssertionError(f"{n} engines did not register ({e}):\n{logs}\n{controller.output()}")
    return rc


def controller_ports(controller):
    info = json.loads(controller.file("engine").read_text())
    ports = {info[k] for k in ("registration", "control", "mux", "task", "iopub", "hb_ping", "hb_pong")}
    ports |= set(info["broadcast"])
    if info.get("rpar_native"):
        ports.add(info["rpar_native"]["port"])
    return ports


def connections_to(pid, ports):
    """Established TCP connections of process `pid` whose peer port is one of `ports` (ss)."""
    out = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True, text=True).stdout
    n = 0
    for line in out.splitlines():
        if f"pid={pid}," not in line:
            continue
        cols = line.split()
        peer = cols[3] if len(cols) > 3 else ""
        if peer.rsplit(":", 1)[-1].isdigit() and int(peer.rsplit(":", 1)[-1]) in ports:
            n += 1
    return n


def test_native_job_runs_the_client_api_over_at_most_four_connections(make_controller, jobs):
    import ipyparallel as ipp

    ctl = make_controller("--ip=127.0.0.1", "--ping=500")
    n = 8
    job = jobs(ctl, n)
    rc = client_for(ctl, n, job)
    try:
        assert sorted(rc.ids) == list(range(n))
        wait_for(lambda: NATIVE in job.output(), timeout=30, what="rank 0 on the native transport")
        dv = rc[:]
        assert dv.apply_sync(lambda x: x * 3, 14) == [42] * n
        assert len(set(dv.apply_sync(os.getpid))) == n
        dv.push({"a": 7}, block=True)
        assert dv.pull("a", block=True) == [7] * n
        dv.scatter("x", list(range(20)), block=True)
        assert dv.gather("x", block=True) == list(range(20))
        assert dv.map_sync(lambda v: v * v, range(16)) == [v * v for v in range(16)]
        lb = rc.load_balanced_view()
        assert lb.map_sync(lambda v: v + 1, range(40)) == list(range(1, 41))
        ar = dv.execute("c = a * 6\nc", silent=False, block=True)
        assert [r["data"]["text/plain"] for r in ar.execute_result] == ["42"] * n
        assert rc.broadcast_view().apply_sync(lambda: 5) == [5] * n
        # printf from C reaches the client
        ar = dv.execute(
            "import ctypes\nlibc = ctypes.CDLL(None)\nlibc.printf(b'from C %d\\n', 17)\nlibc.fflush(None)",
            block=True,
        )
        assert ar.stdout == ["from C 17\n"] * n
        # mpi4py on COMM_WORLD beside the relay
        dv.execute("from mpi4py import MPI; r = MPI.COMM_WORLD.allreduce(MPI.COMM_WORLD.rank)", block=True)
        assert dv["r"] == [sum(range(n))] * n
        # abort a queued task
        busy = rc[3].apply_async(time.sleep, 1.5)
        queued = rc[3].apply_async(os.getpid)
        rc.abort(queued, targets=3, block=True)
        with pytest.raises(ipp.error.TaskAborted):
            queued.get(timeout=30)
        busy.get(timeout=30)
        # rank 0 holds one connection to the controller for the whole job
        conns = connections_to(job.rank_pid(0), controller_ports(ctl))
        assert 1 <= conns <= 4, conns
        for r in range(1, n):
            assert connections_to(job.rank_pid(r), controller_ports(ctl)) == 0
    finally:
        rc.close()
    # %px through a real IPython shell
    code = (
        "import ipyparallel as ipp\n"
        f"rc = ipp.Client(r'{ctl.file('client')}')\n"
        f"rc.wait_for_engines({n}, timeout=30)\n"
        "rc[:].activate()\n"
        "get_ipython().run_line_magic('px', 'px_sq = 7 * 6')\n"
        "print('PULLED', rc[:].pull('px_sq', block=True))\n"
        "rc.close()\n"
    )
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "IPython", "--quick", "--no-banner", "--colors=NoColor", "-c", code],
        capture_output=True, text=True, timeout=120,
    )
    assert f"PULLED {[42] * n}" in r.stdout, r.stdout + r.stderr


def test_native_compat_and_python_engines_share_one_controller(make_controller, make_engines, jobs):
    ctl = make_controller("--ip=127.0.0.1", "--ping=500")
    native = jobs(ctl, 2)
    compat = jobs(ctl, 2, args=["--transport=compat"])
    py = make_engines(ctl, 1)
    rc = client_for(ctl, 5, native, compat, py)
    try:
        wait_for(lambda: NATIVE in native.output(), timeout=30, what="the native job")
        assert NATIVE not in compat.output()
        pids = rc[:].apply_sync(os.getpid)
        assert len(set(pids)) == 5
        lb = rc.load_balanced_view()
        assert lb.map_sync(lambda v: v * 2, range(50)) == [v * 2 for v in range(50)]
        # every engine can take load-balanced work
        got = set()
        for e in rc.ids:
            got.add(rc.load_balanced_view(targets=[e]).apply_sync(os.getpid))
        assert got == set(pids)
    finally:
        rc.close()


def job_ids(rc, job):
    """Engine ids of `job` (by the tag in their namespace)."""
    ids = rc.ids
    return [e for e, tag in zip(ids, rc[ids].pull("JOB_TAG", block=True)) if tag == job.tag]


@pytest.mark.parametrize("victim", [1, 0])
def test_killed_rank_takes_its_native_job_down_and_only_that_one(make_controller, jobs, victim):
    import ipyparallel as ipp

    ctl = make_controller("--ip=127.0.0.1", "--ping=500")
    a = jobs(ctl, 3)
    rc = client_for(ctl, 3, a)
    b = jobs(ctl, 2)
    try:
        wait_for(lambda: len(rc.ids) == 5, timeout=90, what=f"second job registered:\n{b.output()}")
        mine = job_ids(rc, a)
        others = sorted(set(rc.ids) - set(mine))
        assert len(mine) == 3 and len(others) == 2
        running = rc[mine[1]].apply_async(time.sleep, 60)
        time.sleep(0.5)
        os.kill(a.rank_pid(victim), signal.SIGKILL)
        wait_for(lambda: sorted(rc.ids) == others, timeout=60, what="the killed job's engines unregistered")
        with pytest.raises(ipp.error.RemoteError) as ei:
            running.get(timeout=60)
        assert ei.value.ename == "EngineError", ei.value
        assert rc[others].apply_sync(lambda x: x + 1, 1) == [2, 2]
        a.wait(60)
    finally:
        rc.close()


def test_native_job_registers_again_after_a_controller_restart(make_controller, jobs):
    ctl = make_controller("--ip=127.0.0.1", "--ping=500", "--reuse")
    job = jobs(ctl, 2)
    rc = client_for(ctl, 2, job)
    assert rc[:].apply_sync(lambda: 1) == [1, 1]
    rc.close()
    ctl.proc.kill()
    ctl.proc.wait()
    ctl2 = make_controller("--ip=127.0.0.1", "--ping=500", "--reuse")
    rc = client_for(ctl2, 2, job)
    try:
        assert sorted(rc.ids) == [0, 1]
        assert rc[:].apply_sync(lambda x: x * 2, 21) == [42, 42]
        assert "registering again" in job.output()
    finally:
        rc.close()


def test_python_ipcontroller_gets_the_compat_transport(make_controller, jobs):
    ctl = make_controller("--ip=127.0.0.1", "--ping=500", kind="python")
    job = jobs(ctl, 2)
    rc = client_for(ctl, 2, job)
    try:
        assert rc[:].apply_sync(lambda x: x + 1, 1) == [2, 2]
        assert NATIVE not in job.output()
    finally:
        rc.close()
    forced = jobs(ctl, 1, args=["--transport=native"])
    assert forced.wait(60) != 0
    assert "offers no native transport" in forced.output()


def noop():
    return None


def test_loadgen_2048_engines(make_controller):
    ctl = make_controller("--ip=127.0.0.1")
    log = open(ctl.profile_dir.parent / "loadgen.log", "w")
    lg = subprocess.Popen(
        [rpar_bin("rpar-loadgen"), "--engines", "2048", "--jobs", "4", f"--profile-dir={ctl.profile_dir}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        rc = ctl.client(timeout=30)
        rc.wait_for_engines(2048, timeout=120)
        assert sorted(rc.ids) == list(range(2048))
        assert rc[:].apply_sync(noop) == [None] * 2048
        assert rc.queue_status()["unassigned"] == 0
        rc.close()
        lg.send_signal(signal.SIGTERM)
        assert lg.wait(30) == 128 + signal.SIGTERM
        text = (ctl.profile_dir.parent / "loadgen.log").read_text()
        assert re.search(r"registered 2048 engines in 4 job\(s\) in [0-9.]+ s", text), text
    finally:
        if lg.poll() is None:
            lg.kill()
            lg.wait()
        log.close()
