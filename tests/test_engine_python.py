"""Engine-side Python on rpar-engine, as ipyparallel users' code finds it on an ipengine: IPython's
own config classes (command line and ipengine_config.py), ipyparallel.datapub.publish_data,
rc.become_dask() / stop_dask(), bind_kernel() with a real Jupyter client. Real rpar-controller,
real ipyparallel Client, a single-rank rpar-engine and a 4-rank MPI job."""

import contextlib
import os

import ipyparallel as ipp
import pytest

from conftest import Controller, wait_for
from util_engine import EngineJob


@pytest.fixture(scope="module", params=[1, 4], ids=["1-rank", "4-rank"])
def cluster(request, tmp_path_factory):
    """rpar-controller and `mpiexec -n N rpar-engine --InteractiveShell.colors=nocolor`, with
    `c.InteractiveShell.xmode = 'Plain'` in the profile's ipengine_config.py."""
    n = request.param
    ipdir = tmp_path_factory.mktemp("ipython")
    old = os.environ.get("IPYTHONDIR")
    os.environ["IPYTHONDIR"] = str(ipdir)
    profile = ipdir / "profile_default"
    profile.mkdir()
    (profile / "ipengine_config.py").write_text("c = get_config()\nc.InteractiveShell.xmode = 'Plain'\n")
    ctl = Controller(profile, ["--ip=127.0.0.1", "--ping=500"])
    job = EngineJob("openmpi", n, profile, ["--InteractiveShell.colors=nocolor"])
    rc = ctl.client(timeout=20)
    try:
        try:
            rc.wait_for_engines(n, timeout=90)
        except Exception as e:
            raise AssertionError(f"{n} engines did not register ({e}):\n{job.output()}\n{ctl.output()}")
        yield n, rc, profile, job, ctl
    finally:
        rc.close()
        job.stop()
        ctl.stop()
        if old is None:
            os.environ.pop("IPYTHONDIR", None)
        else:
            os.environ["IPYTHONDIR"] = old


def _logs(job, ctl):
    return f"{job.output()}\n{ctl.output()}"


@contextlib.contextmanager
def _fresh_job(tmp_path, ranks):
    """A controller and a `ranks`-rank job of their own, for what a fresh engine has loaded:
    (client, job, controller)."""
    profile = tmp_path / "profile_default"
    profile.mkdir()
    ctl = Controller(profile, ["--ip=127.0.0.1", "--ping=500"])
    job = EngineJob("openmpi", ranks, profile, [])
    rc = ctl.client(timeout=20)
    try:
        rc.wait_for_engines(ranks, timeout=90)
        yield rc, job, ctl
    finally:
        rc.close()
        job.stop()
        ctl.stop()


def _loaded():
    import sys

    session = sys.modules.get("jupyter_client.session")
    return {
        "zmq": "zmq" in sys.modules,
        "tornado": "tornado" in sys.modules,
        "IPython": "IPython" in sys.modules,
        "session_ran": session is not None and "Session" in vars(session),
    }


def _session_names():
    import jupyter_client
    from jupyter_client.session import MAX_BYTES, MAX_ITEMS, Session

    return Session.__name__, MAX_ITEMS, MAX_BYTES, bool(jupyter_client.__version__)


def test_apply_loads_only_the_serializer(tmp_path):
    """An apply request loads ipyparallel's serializer without what it does not use (pyzmq,
    tornado, IPython, jupyter_client.session's code: a third of an engine's start-up CPU), and
    all of it is there as soon as code asks for it."""
    with _fresh_job(tmp_path, 1) as (rc, job, ctl):
        _loaded.__module__ = _session_names.__module__ = "__main__"
        assert rc[0].apply_sync(_loaded) == {"zmq": False, "tornado": False, "IPython": False,
                                             "session_ran": False}, _logs(job, ctl)
        assert rc[0].apply_sync(_session_names) == ("Session", 64, 1024, True)
        assert rc[0].apply_sync(_loaded)["session_ran"] is True


def _asyncio_loaded():
    import sys

    return "asyncio" in sys.modules


def _traitlets_state():
    import sys

    return "traitlets.traitlets" in sys.modules


def _use_traitlets():
    import traitlets
    from traitlets import HasTraits, Int

    class Counter(HasTraits):
        n = Int(3)

    return Counter(n=5).n * 2, bool(traitlets.__version__)


def _schedule_on_the_loop(x):
    import asyncio

    loop = asyncio.get_event_loop()

    async def later():
        await asyncio.sleep(0.01)
        return x * 2

    globals()["scheduled"] = loop.create_task(later())
    return not loop.is_closed()


def _scheduled_result():
    task = globals()["scheduled"]
    return task.result() if task.done() else None


def test_asyncio_waits_for_code_that_imports_it(tmp_path):
    """Apply requests do not load asyncio; code that imports it finds an event loop at once, and
    a task it leaves on the loop runs between requests, as on an ipengine. traitlets is held
    likewise, and whole as soon as code uses it."""
    with _fresh_job(tmp_path, 2) as (rc, job, ctl):
        for f in (_asyncio_loaded, _schedule_on_the_loop, _scheduled_result):
            f.__module__ = "__main__"
        assert rc[:].apply_sync(_asyncio_loaded) == [False, False], _logs(job, ctl)
        assert rc[1].apply_sync(_schedule_on_the_loop, 21) is True
        wait_for(lambda: rc[1].apply_sync(_scheduled_result) == 42, timeout=30, what="the scheduled task")
        assert rc[:].apply_sync(_asyncio_loaded) == [False, True]
        # traitlets is held too (the serializer takes one function of it), and whole on demand
        _traitlets_state.__module__ = _use_traitlets.__module__ = "__main__"
        assert rc[:].apply_sync(_traitlets_state) == [False, False]
        assert rc[0].apply_sync(_use_traitlets) == (10, True)
        assert rc[:].apply_sync(_traitlets_state) == [True, False]


def test_ipython_config_takes_effect(cluster):
    n, rc, _, job, ctl = cluster
    dv = rc[:]
    settings = dv.apply_sync(ipp.interactive(lambda: (str(get_ipython().colors).lower(), get_ipython().xmode)))
    assert settings == [("nocolor", "Plain")] * n, _logs(job, ctl)
    # a traceback without colour codes, in Plain form (execute and apply alike)
    with pytest.raises(ipp.error.CompositeError) as ei:
        dv.execute("def g():\n    return 1/0\ng()", block=True)
    assert len(ei.value.elist) == n
    for ename, _, tb, _ in ei.value.elist:
        assert ename == "ZeroDivisionError"
        assert "\x1b[" not in tb, tb
        assert "Traceback (most recent call last)" in tb and "---->" not in tb, tb
    with pytest.raises(ipp.error.RemoteError) as ei:
        rc[n - 1].apply_sync(ipp.interactive(lambda: {}["missing"]))
    tb = "\n".join(ei.value.traceback) if isinstance(ei.value.traceback, list) else ei.value.traceback
    assert "\x1b[" not in tb and "KeyError" in tb, tb


@ipp.interactive
def _publish_five(flag):
    import os
    import time

    from ipyparallel.datapub import publish_data

    for i in range(5):
        publish_data({"i": i, "pid": os.getpid()})
    while not os.path.exists(flag):
        time.sleep(0.01)
    return os.getpid()


@pytest.mark.parametrize("view", ["direct", "load-balanced", "broadcast"])
def test_publish_data(cluster, view, tmp_path):
    n, rc, _, job, ctl = cluster
    flag = tmp_path / f"go-{view}"
    if view == "direct":
        v = rc[:]
    elif view == "broadcast":
        v = rc.broadcast_view()
    else:
        v = rc.load_balanced_view()
    if view == "load-balanced":
        ars = [v.apply_async(_publish_five, str(flag)) for _ in range(n)]
    else:
        ars = [v.apply_async(_publish_five, str(flag))]

    def datas():
        out = []
        for ar in ars:
            d = ar.data
            out += d if isinstance(d, list) else [d]
        return out

    # while the tasks run (they wait for the flag), the last value of each engine is there
    wait_for(lambda: all(d.get("i") == 4 for d in datas()), timeout=60, what=f"data of {view} tasks")
    assert not any(ar.ready() for ar in ars)
    flag.write_text("go")
    pids = []
    for ar in ars:
        r = ar.get(timeout=60)
        pids += r if isinstance(r, list) else [r]
    assert len(pids) == n
    # and after: one value per engine (the one that ran the task)
    assert sorted(d["pid"] for d in datas()) == sorted(pids), _logs(job, ctl)
    assert all(d["i"] == 4 for d in datas())


@ipp.interactive
def _worker_state():
    import os

    w = get_ipython().kernel.distributed_worker
    return os.getpid(), w is not None


def test_become_dask(cluster):
    pytest.importorskip("distributed")
    da = pytest.importorskip("dask.array")
    n, rc, _, job, ctl = cluster
    engine_pids = rc[:].apply_sync(os.getpid)
    executor = rc.become_dask()
    try:
        # one worker per engine, in the engines' processes
        wait_for(lambda: len(executor.scheduler_info()["workers"]) == n, timeout=60, what="dask workers")
        assert sorted(executor.run(os.getpid).values()) == sorted(engine_pids)
        assert executor.submit(lambda x: x * 2 + 1, 20).result(timeout=60) == 41
        x = da.arange(10_000, chunks=1_000)
        assert executor.compute((x * 2).sum()).result(timeout=60) == 2 * sum(range(10_000))
        # ipyparallel requests are served while the workers run, and the workers go on after
        assert rc[:].apply_sync(_worker_state) == [(p, True) for p in engine_pids]
        assert executor.submit(sum, [1, 2, 3]).result(timeout=60) == 6
    finally:
        executor.close()
        rc.stop_dask()
    assert rc[:].apply_sync(lambda x: x + 1, 1) == [2] * n
    wait_for(
        lambda: rc[:].apply_sync(_worker_state) == [(p, False) for p in engine_pids],
        timeout=30,
        what="workers stopped",
    )


def test_bind_kernel(cluster):
    from jupyter_client import BlockingKernelClient

    n, rc, profile, job, ctl = cluster
    targets = sorted({0, n - 1})
    for i in targets:
        rc[i].push({"x": 1000 + i}, block=True)
        rc[i].apply_sync(ipp.bind_kernel)
    for i in targets:
        pid = rc[i].apply_sync(os.getpid)
        path = profile / "security" / f"kernel-{pid}.json"
        wait_for(path.exists, timeout=30, what=f"{path}")
        kc = BlockingKernelClient(connection_file=str(path))
        kc.load_connection_file()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            out = []
            reply = kc.execute_interactive("x", timeout=60, output_hook=out.append)
            assert reply["content"]["status"] == "ok", reply
            results = [m["content"]["data"]["text/plain"] for m in out if m["msg_type"] == "execute_result"]
            assert results == [str(1000 + i)], (out, _logs(job, ctl))
            # a variable set from the Jupyter client is the engine's too
            kc.execute_interactive("y = x + 1\nprint('hello', y)", timeout=60, output_hook=out.append)
            streams = "".join(m["content"]["text"] for m in out if m["msg_type"] == "stream")
            assert f"hello {1001 + i}" in streams
        finally:
            kc.stop_channels()
        assert rc[i].pull("y", block=True) == 1001 + i
    # the engines go on serving ipyparallel
    assert rc[:].apply_sync(lambda: 3) == [3] * n
