"""rpar-controller's load-balanced and broadcast scheduling with the real Python client and real
Python ipengines: schemes, dependencies, retries, timeouts, targets, abort, engine death, and
hub shutdown."""

import os
import signal
import time

import ipyparallel as ipp
import pytest

from conftest import connect, wait_for


def square(x):
    return x * x


def slow_pid(t):
    import os
    import time

    time.sleep(t)
    return os.getpid()


def where():
    import os

    return os.getpid()


@ipp.interactive
def fail_if_flagged():
    # `fail_here` is pushed per engine by the test
    if fail_here:  # noqa: F821
        raise ValueError("flagged engine")
    return "ok"


def fail():
    raise RuntimeError("always")


def test_big_load_balanced_map(rpar_cluster):
    _, _, rc = rpar_cluster
    lv = rc.load_balanced_view()
    n = 1000
    assert lv.map_sync(square, range(n)) == [i * i for i in range(n)]
    # both engines took part
    ar = lv.map_async(lambda i: __import__("os").getpid(), range(40))
    assert len(set(ar.get(timeout=60))) == 2


def test_targets_and_follow(rpar_cluster):
    _, _, rc = rpar_cluster
    pids = rc[:].apply_sync(where)
    lv = rc.load_balanced_view(targets=[1])
    assert set(lv.map_sync(lambda i: __import__("os").getpid(), range(6))) == {pids[1]}
    lv = rc.load_balanced_view()
    first = lv.apply_async(where)
    first.get(timeout=30)
    with lv.temp_flags(follow=[first]):
        followers = [lv.apply_async(where) for _ in range(5)]
    assert {f.get(timeout=30) for f in followers} == {first.get()}


def test_after_orders_tasks(rpar_cluster):
    _, _, rc = rpar_cluster
    lv = rc.load_balanced_view()
    a = lv.apply_async(slow_pid, 0.5)
    with lv.temp_flags(after=[a]):
        b = lv.apply_async(where)
    b.get(timeout=30)
    assert a.ready()
    assert b.started >= a.completed


def test_impossible_and_invalid_dependencies(rpar_cluster):
    _, _, rc = rpar_cluster
    lv = rc.load_balanced_view()
    bad = lv.apply_async(fail)
    with pytest.raises(ipp.RemoteError):
        bad.get(timeout=30)
    with lv.temp_flags(after=[bad]):
        dep = lv.apply_async(where)
    with pytest.raises(ipp.RemoteError) as e:
        dep.get(timeout=30)
    assert e.value.ename == "ImpossibleDependency"
    with lv.temp_flags(after=["no-such-task"]):
        inv = lv.apply_async(where)
    with pytest.raises(ipp.RemoteError) as e:
        inv.get(timeout=30)
    assert e.value.ename == "InvalidDependency"


def test_timeout(rpar_cluster):
    _, _, rc = rpar_cluster
    lv = rc.load_balanced_view()
    slow = rc[0].apply_async(slow_pid, 3)
    with lv.temp_flags(after=[lv.apply_async(slow_pid, 2)], timeout=0.3):
        t = lv.apply_async(where)
    with pytest.raises(ipp.RemoteError) as e:
        t.get(timeout=30)
    assert e.value.ename == "TaskTimeout"
    slow.get(timeout=30)


def test_retries_move_to_another_engine(rpar_cluster):
    _, _, rc = rpar_cluster
    rc[0].push({"fail_here": True}, block=True)
    rc[1].push({"fail_here": False}, block=True)
    lv = rc.load_balanced_view()
    with lv.temp_flags(retries=1):
        ars = [lv.apply_async(fail_if_flagged) for _ in range(8)]
    assert [a.get(timeout=30) for a in ars] == ["ok"] * 8
    assert {a.engine_id for a in ars} == {1}
    with lv.temp_flags(retries=0):
        ars = [lv.apply_async(fail_if_flagged) for _ in range(8)]
    outcomes = []
    for a in ars:
        try:
            outcomes.append(a.get(timeout=30))
        except ipp.RemoteError as err:
            outcomes.append(err.ename)
    assert "ValueError" in outcomes and "ok" in outcomes


def test_broadcast_view(rpar_cluster):
    _, _, rc = rpar_cluster
    pids = rc[:].apply_sync(where)
    bv = rc.broadcast_view()
    assert bv.apply_sync(where) == pids
    bv = rc.broadcast_view(is_coalescing=True)
    assert bv.apply_sync(square, 3) == [9, 9]
    bv.execute("bcast_value = 11", block=True)
    assert rc[:].pull("bcast_value", block=True) == [11, 11]


def test_abort_queued(rpar_cluster):
    _, _, rc = rpar_cluster
    busy = rc[0].apply_async(slow_pid, 1.5)
    queued = rc[0].apply_async(where)
    rc.abort(queued, targets=0, block=True)
    with pytest.raises(ipp.error.TaskAborted):
        queued.get(timeout=30)
    busy.get(timeout=30)


@pytest.mark.parametrize("scheme", ["leastload", "lru", "plainrandom", "twobin", "weighted", "pure"])
def test_each_scheme(make_controller, make_engines, scheme):
    # (with `pure`, the client stops task farming for good if it ever sees engine ids that are
    # not 0..n-1: the hub makes registrations appear in id order)
    ctl = make_controller("--ping=500", f"--scheme={scheme}")
    eng = make_engines(ctl, 2)
    rc = connect(ctl, 2, eng)
    try:
        lv = rc.load_balanced_view()
        assert lv.map_sync(square, range(30)) == [i * i for i in range(30)]
        assert rc.queue_status()["unassigned"] == 0
    finally:
        rc.close()


def test_engine_killed_fails_its_tasks_and_unregisters(make_controller, make_engines):
    ctl = make_controller("--ping=500")
    eng = make_engines(ctl, 2)
    rc = connect(ctl, 2, eng)
    try:
        pid1 = rc[1].apply_sync(where)
        lv = rc.load_balanced_view(targets=[1])
        doomed = lv.apply_async(slow_pid, 60)
        wait_for(lambda: rc.queue_status(1)["tasks"] == 1, what="task placed on engine 1")
        os.kill(pid1, signal.SIGKILL)
        with pytest.raises(ipp.RemoteError) as e:
            doomed.get(timeout=60)
        assert e.value.ename == "EngineError"
        wait_for(lambda: rc.ids == [0], timeout=30, what="engine 1 unregistered")
        # the rest of the cluster still works
        assert rc.load_balanced_view().apply_sync(square, 4) == 16
    finally:
        rc.close()


def test_shutdown_hub_stops_everything(make_controller, make_engines):
    ctl = make_controller("--ping=500")
    eng = make_engines(ctl, 2)
    rc = connect(ctl, 2, eng)
    rc.shutdown(hub=True, block=True)
    assert ctl.proc.wait(30) == 0
    assert not ctl.file("client").exists() and not ctl.file("engine").exists()
    for p in eng.procs:
        p.wait(30)
