"""rpar-engine as one MPI job, driven by the real ipyparallel Client, against the real Python
ipcontroller (and rpar-controller when built): registration of ranks as engines 0..3,
apply/map/execute/push/pull/scatter/gather, mpi4py inside the engines, C-level output,
shutdown, a killed rank, a GIL-holding task, signal_request."""

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from util_engine import EngineJob, rpar_controller_available, wait_until

N = 4


def controller_kinds():
    kinds = ["python"]
    if rpar_controller_available():
        kinds.append("rpar")
    return kinds


@pytest.fixture(params=["openmpi", "mpich"])
def flavour(request):
    return request.param


@pytest.fixture(params=controller_kinds())
def controller(request, make_controller):
    return make_controller("--ip=127.0.0.1", "--ping=500", kind=request.param)


@pytest.fixture
def job_factory():
    made = []

    def make(flavour, controller, n=N, args=(), env=None, prefix=()):
        j = EngineJob(flavour, n, controller.profile_dir, args, env=env, prefix=prefix)
        made.append(j)
        return j

    yield make
    for j in made:
        j.stop()


def connect(controller, job, n=N, timeout=60):
    rc = controller.client(timeout=20)
    try:
        rc.wait_for_engines(n, timeout=timeout)
    except Exception as e:
        out = job.output()
        rc.close()
        raise AssertionError(f"{n} engines did not register ({e}):\n{out}\n{controller.output()}")
    return rc


@contextlib.contextmanager
def connected(controller, job, n=N):
    """`connect`, closing the client on leaving."""
    rc = connect(controller, job, n=n)
    try:
        yield rc
    finally:
        rc.close()


def test_ranks_register_and_compute(flavour, controller, job_factory):
    job = job_factory(flavour, controller)
    with connected(controller, job) as rc:
        assert sorted(rc.ids) == [0, 1, 2, 3]
        dv = rc[:]
        # apply: every engine computes, results in engine order
        assert dv.apply_sync(lambda x: x * 3, 14) == [42] * N
        pids = dv.apply_sync(os.getpid)
        assert len(set(pids)) == N
        # the engine id is the MPI rank
        ranks = dv.apply_sync(
            lambda: int(
                __import__("os").environ.get("OMPI_COMM_WORLD_RANK")
                or __import__("os").environ.get("PMI_RANK")
            )
        )
        assert ranks == [0, 1, 2, 3]
        # push / pull
        dv.push({"a": 7, "b": [1, 2]}, block=True)
        assert dv.pull("a", block=True) == [7] * N
        assert rc[2].pull("b", block=True) == [1, 2]
        # scatter / gather
        dv.scatter("x", list(range(10)), block=True)
        parts = dv.pull("x", block=True)
        assert [len(p) for p in parts] == [3, 3, 2, 2]
        assert dv.gather("x", block=True) == list(range(10))
        # map (direct and load-balanced)
        assert dv.map_sync(lambda v: v * v, range(12)) == [v * v for v in range(12)]
        lb = rc.load_balanced_view()
        assert lb.map_sync(lambda v: v + 1, range(20)) == list(range(1, 21))
        # execute: namespace shared with push/pull, execute_result for a trailing expression
        ar = dv.execute("c = a * 6\nc", silent=False, block=True)
        assert [r["data"]["text/plain"] for r in ar.execute_result] == ["42"] * N
        assert dv["c"] == [42] * N
        # Python-level stdout
        ar = rc[1].execute("print('out', 1 + 1)", block=True)
        assert ar.stdout == "out 2\n"
        # C-level printf reaches the client as a stream message
        ar = dv.execute(
            "import ctypes\nlibc = ctypes.CDLL(None)\n"
            "libc.printf(b'from C %d\\n', 17)\nlibc.fflush(None)",
            block=True,
        )
        assert ar.stdout == ["from C 17\n"] * N
        # errors come back as RemoteErrors with the engine's traceback
        with pytest.raises(Exception) as ei:
            rc[3].apply_sync(lambda: 1 / 0)
        assert "ZeroDivisionError" in str(ei.value)
        # magics work (IPython shell)
        ar = rc[0].execute("%time z = 5", block=True)
        assert rc[0]["z"] == 5


@pytest.mark.parametrize("doorbell", ["1", "0"])
def test_large_messages_with_and_without_doorbells(controller, job_factory, doorbell):
    """Relay traffic wakes ranks through their doorbells; with RPAR_ENGINE_DOORBELL=0 (as for
    ranks on another host) it is probed on a timer. Both must carry multi-megabyte messages (MPI
    rendezvous: the sender's loop has to keep progressing the send) both ways."""
    job = job_factory("openmpi", controller, env={"RPAR_ENGINE_DOORBELL": doorbell})
    with connected(controller, job) as rc:
        dv = rc[:]
        blob = bytes(range(256)) * (32 * 1024)  # 8 MiB
        dv.push({"blob": blob}, block=True)
        assert dv.apply_sync(lambda: len(blob)) == [len(blob)] * N
        back = dv.apply_sync(lambda: blob[::-1])
        assert back == [blob[::-1]] * N
        # many small round trips in a row
        assert dv.map_sync(lambda x: x + 1, range(64)) == list(range(1, 65))


def _flood(n):
    for i in range(n):
        print("line", i, flush=i % 7 == 0)
    return n


@pytest.mark.parametrize("doorbell", ["1", "0"])
def test_a_flood_of_output_from_a_relayed_rank_arrives_whole(controller, job_factory, doorbell):
    """A relayed rank's threads send to rank 0 themselves: thousands of output messages in a
    row (many sends in flight at once, which the runtime loop must help finish) all arrive, in
    order, with doorbells and on the timed fallback."""
    job = job_factory("openmpi", controller, env={"RPAR_ENGINE_DOORBELL": doorbell})
    with connected(controller, job) as rc:
        ar = rc[rc.ids[-1]].apply_async(_flood, 20_000)
        assert ar.get(timeout=60) == 20_000
        ar.wait_for_output(timeout=30)
        assert ar.stdout.splitlines() == [f"line {i}" for i in range(20_000)]


def _talk(x):
    print("out", x)
    return 2 * x


def test_status_brackets_every_request(controller, job_factory):
    """Each request's IOPub traffic is busy, its output, then idle, on every rank (relayed ones
    too), and busy comes while a silent request still runs: rpar-engine sends busy with the
    request's first output or its reply, or at its runtime loop's next wake-up."""
    job = job_factory("openmpi", controller)
    with connected(controller, job) as rc:
        seen = []
        deserialize = rc.session.deserialize

        def spy(*a, **kw):
            m = deserialize(*a, **kw)
            c = m["content"]
            seen.append((m["parent_header"].get("msg_id"), m["header"]["msg_type"],
                         c.get("execution_state") or c.get("name")))
            return m

        rc.session.deserialize = spy
        ars = [rc[e].apply_async(_talk, e) for e in rc.ids]
        assert [a.get(timeout=30) for a in ars] == [2 * e for e in rc.ids]
        slow = rc[rc.ids[-1]].apply_async(time.sleep, 5)
        wait_until(lambda: (slow.msg_ids[0], "status", "busy") in seen, 4, "busy of a silent request")
        assert not slow.ready()
        slow.get(timeout=30)
        for a in ars + [slow]:
            wait_until(lambda: (a.msg_ids[0], "status", "idle") in seen, 10, "idle")
            iopub = [(t, s) for (p, t, s) in seen if p == a.msg_ids[0] and t in ("status", "stream")]
            assert iopub[0] == ("status", "busy") and iopub[-1] == ("status", "idle"), iopub
            middle = iopub[1:-1]
            if a is slow:
                assert middle == [], iopub
            else:
                assert middle and all(m == ("stream", "stdout") for m in middle), iopub


class _OldPythonFunction:
    """Pickles like a function from a Python 3.8-3.10 client: ipyparallel's code_ctor with the
    16 code-object fields those versions have (this Python's CodeType takes 18)."""

    def __call__(self):
        return 1

    def __reduce__(self):
        from ipyparallel.serialize.codeutil import code_ctor

        c = (lambda: 1).__code__
        fields = (c.co_argcount, c.co_posonlyargcount, c.co_kwonlyargcount, c.co_nlocals,
                  c.co_stacksize, c.co_flags, c.co_code, c.co_consts, c.co_names, c.co_varnames,
                  c.co_filename, c.co_name, c.co_firstlineno, c.co_linetable, c.co_freevars,
                  c.co_cellvars)
        return (code_ctor, fields)


def test_client_python_version_mismatch_is_named(controller, job_factory):
    import sys

    job = job_factory("openmpi", controller, n=2)
    with connected(controller, job, n=2) as rc:
        with pytest.raises(Exception) as ei:
            rc[1].apply_sync(_OldPythonFunction())
        err = ei.value
        assert getattr(err, "ename", None) == "PythonVersionMismatch", repr(err)
        here = sys.version.split()[0]  # the engine embeds this Python (same venv)
        assert "Python 3.8 to 3.10 (16 code fields)" in err.evalue
        assert f"this engine runs Python {here}" in err.evalue
        # the engine keeps working
        assert rc[1].apply_sync(lambda: 6 * 7) == 42


def test_mpi4py_allreduce(flavour, controller, job_factory):
    if flavour == "mpich":
        # mpi4py >= 4.1 wheels pick their MPICH-ABI module when MPICH is loaded (EngineJob puts
        # libmpi.so.12 on the loader path); an older mpi4py built from source links one MPI only
        import mpi4py

        pkg = Path(mpi4py.__file__).parent
        if not list(pkg.glob("MPI.mpich.*.so")) and "libmpi.so.12" not in os.popen(
            f"ldd {pkg}/MPI.*.so 2>/dev/null"
        ).read():
            pytest.skip(f"mpi4py {mpi4py.__version__} has no MPICH build (needs >= 4.1 wheels)")
    job = job_factory(flavour, controller)
    with connected(controller, job) as rc:
        dv = rc[:]
        dv.execute(
            "from mpi4py import MPI; r = MPI.COMM_WORLD.allreduce(MPI.COMM_WORLD.rank)",
            block=True,
        )
        assert dv["r"] == [6] * N
        assert dv.apply_sync(lambda: __import__("mpi4py.MPI").MPI.COMM_WORLD.size) == [N] * N


def test_shutdown_exits_zero_and_leaves_nothing(flavour, controller, job_factory):
    job = job_factory(flavour, controller)
    with connected(controller, job) as rc:
        assert len(job.pids()) >= N
        rc.shutdown(block=True)
        assert job.wait(30) == 0, job.output()
        wait_until(lambda: not job.pids(), 10, "no rpar-engine process left")
        wait_until(lambda: not rc.ids, 10, "engines unregistered")


@pytest.mark.parametrize("victim", [1, 0])
def test_killed_rank_unregisters_every_engine(controller, job_factory, victim):
    job = job_factory("openmpi", controller)
    with connected(controller, job) as rc:
        pid = job.rank_pid(victim)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not rc.ids, 15, "all engines unregistered")
        took = time.monotonic() - t0
        # well under the 10 missed heartbeats (5 s at --ping=500) it would take without help
        assert took < 10, took
        job.wait(30)
        wait_until(lambda: not job.pids(), 15, "no rpar-engine process left")


def test_gil_holding_task_is_not_declared_dead(controller, job_factory):
    job = job_factory("openmpi", controller, n=2)
    with connected(controller, job, n=2) as rc:
        # PyDLL keeps the GIL during the C call: 7 s = 14 heartbeat periods of 500 ms
        ar = rc[1].execute("import ctypes\nctypes.PyDLL(None).sleep(7)\ndone = 1", block=False)
        ar.get(timeout=30)

        assert sorted(rc.ids) == [0, 1]
        assert rc[1]["done"] == 1


def test_signal_interrupts_running_code(controller, job_factory):
    job = job_factory("openmpi", controller, n=2)
    with connected(controller, job, n=2) as rc:
        # the engine serves requests (its shell is built) before the interrupt is sent
        assert rc[0].apply_sync(lambda: 1) == 1
        ar = rc[0].execute("import time\ntime.sleep(60)", block=False)
        time.sleep(1.5)
        rc.send_signal(signal.SIGINT, targets=[0], block=True)
        with pytest.raises(Exception) as ei:
            ar.get(timeout=20)
        assert "KeyboardInterrupt" in str(ei.value)
        # the engine still works afterwards
        assert rc[0].apply_sync(lambda: 5) == 5


def test_single_rank_without_mpiexec(make_controller, tmp_path):
    import subprocess

    from util_engine import engine_binary

    controller = make_controller("--ip=127.0.0.1", "--ping=500", kind="python")
    _, binary = engine_binary("openmpi")
    env = dict(os.environ)
    for k in list(env):
        if k.startswith(("OMPI_COMM_WORLD", "PMIX_", "PMI_")):
            env.pop(k)
    env["PYTHONPATH"] = os.path.dirname(os.path.abspath(__file__))
    log = open(tmp_path / "single.log", "w")
    p = subprocess.Popen(
        [binary, f"--file={controller.file('engine')}", "--IPEngine.startup_command=preset = 11"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    try:
        rc = controller.client(timeout=20)
        rc.wait_for_engines(1, timeout=60)
        assert rc.ids == [0]
        assert rc[0].pull("preset", block=True) == 11  # set by --IPEngine.startup_command
        assert rc[0].apply_sync(lambda x: x * 2, 21) == 42
        rc.shutdown(block=True)
        assert p.wait(30) == 0
        rc.close()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        log.close()


def test_low_open_file_limit_is_raised_by_controller_and_rank_0(make_controller, job_factory):
    """Login and compute nodes often keep the soft open-file limit at 1024, which rank 0 of the
    compat transport (~14 descriptors per rank) and the controller (~6-8 per engine) reach at a
    few hundred engines, and ZeroMQ then fails connections silently: engines that never
    register. Here both run under a soft limit of 64, which 8 ranks exceed on each side; both
    raise it towards the hard limit and the job works."""
    low = ["prlimit", "--nofile=64:", "--"]
    ctl = make_controller("--ip=127.0.0.1", "--ping=500", prefix=low)
    job = job_factory("openmpi", ctl, n=8, prefix=low, args=["--transport=compat"])
    with connected(ctl, job, n=8) as rc:
        assert rc[:].apply_sync(lambda x: x + 1, 41) == [42] * 8
    assert "open-file limit raised from 64" in job.output()


def test_too_low_hard_open_file_limit_is_a_clear_error(make_controller, job_factory):
    """When even the hard limit cannot hold rank 0's sockets the job fails at once and says
    what to change (it used to start and hang with unregistered engines)."""
    ctl = make_controller("--ip=127.0.0.1", "--ping=500")
    job = job_factory(
        "openmpi", ctl, n=8, prefix=["prlimit", "--nofile=100:100", "--"], args=["--transport=compat"]
    )
    assert job.wait(60) == 255
    out = job.output()
    assert "needs about 176 open files but the hard limit (ulimit -Hn) is 100" in out, out


def test_many_ranks_over_several_zeromq_contexts(make_controller, job_factory):
    """A ZeroMQ context holds at most 1023 sockets and rank 0 opens four per rank, so jobs of
    more than 250 ranks spread them over several contexts. Too big for CI as such; here the
    contexts are made small (16 sockets) so a 24-rank job needs seven of them, and every engine
    must register, compute and reach the others through mpi4py."""
    n = 24
    ctl = make_controller("--ip=127.0.0.1", "--ping=1000")
    job = job_factory(
        "openmpi", ctl, n=n, env={"RPAR_ENGINE_SOCKETS_PER_CONTEXT": "16"}, args=["--transport=compat"]
    )
    with connected(ctl, job, n=n) as rc:
        assert sorted(rc.ids) == list(range(n))
        assert rc[:].apply_sync(lambda x: x * 2, 21) == [42] * n
        rc[:].execute(
            "from mpi4py import MPI; s = MPI.COMM_WORLD.allreduce(MPI.COMM_WORLD.rank)", block=True
        )
        assert rc[:]["s"] == [sum(range(n))] * n
    # 24 registration + 72 engine sockets + 2 shared = 98 sockets, 16 per context
    assert "98 ZeroMQ sockets in 7 contexts" in job.output()
