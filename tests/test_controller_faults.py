"""Faults and hostile corners found by issue 11, with the real ipyparallel client: a broadcast to
a repeated target, the tasks of a killed rank, a rank stopped past the heartbeat limit, and the
reply of a task in flight while the controller was restarted.

ipyparallel is imported inside the tests: functions defined here are pickled with a reference to
this module, which the rpar-engines' Python (without ipyparallel) must be able to import."""

import os
import signal
import time

import pytest

from conftest import connect, read_json, wait_for
from util_engine import EngineJob


def slow_value(t, v):
    import time

    time.sleep(t)
    return v


@pytest.fixture
def job_factory():
    made = []

    def make(controller, n, args=()):
        j = EngineJob("openmpi", n, controller.profile_dir, args)
        made.append(j)
        return j

    yield make
    for j in made:
        j.stop()


def test_broadcast_to_a_repeated_target_completes(make_controller, make_engines):
    # the two derived requests were byte-identical: the engine dropped the second as a replay
    ctl = make_controller("--ping=500")
    eng = make_engines(ctl, 2)
    rc = connect(ctl, 2, eng)
    try:
        bv = rc.broadcast_view(targets=[0, 0], is_coalescing=True)
        assert bv.apply_async(pow, 2, 3).get(timeout=60) == [8]
        bv = rc.broadcast_view(targets=[1, 0, 1], is_coalescing=True)
        assert bv.apply_async(pow, 3, 2).get(timeout=60) == [9, 9]
    finally:
        rc.close()


def test_task_of_a_killed_rank_fails_with_engine_error(make_controller, job_factory):
    import ipyparallel as ipp

    ctl = make_controller("--ip=127.0.0.1", "--ping=500")
    job = job_factory(ctl, 2)
    rc = connect(ctl, 2, job)
    try:
        # (builtins: the engines' Python imports no test module)
        doomed = rc.load_balanced_view(targets=[1]).apply_async(time.sleep, 120)
        wait_for(lambda: rc.queue_status(1)["tasks"] == 1, what="task placed on engine 1")
        os.kill(job.rank_pid(1), signal.SIGKILL)
        with pytest.raises(ipp.RemoteError) as e:
            doomed.get(timeout=60)
        assert e.value.ename == "EngineError"
        assert "died" in e.value.evalue, e.value.evalue
    finally:
        rc.close()


def test_rank_stopped_past_the_heartbeat_limit_is_registered_again(make_controller, job_factory):
    # --ping=300 with 3 misses: declared dead after about a second of silence
    ctl = make_controller("--ip=127.0.0.1", "--ping=300", "--HeartMonitor.max_heartmonitor_misses=3")
    # the compat transport: each rank answers its own heartbeats (with the native one the job
    # answers for all its ranks, and a stopped rank is not declared dead by its heart)
    job = job_factory(ctl, 2, args=("--transport=compat",))
    rc = connect(ctl, 2, job)
    try:
        pid = job.rank_pid(1)
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_for(lambda: rc.ids == [0], timeout=30, what="stopped rank 1 unregistered")
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: sorted(rc.ids) == [0, 1], timeout=30, what="rank 1 registered again")
        # not a zombie: it computes, and the job kept its other rank
        assert rc[1].apply_sync(pow, 6, 2) == 36
        assert rc[:].apply_sync(pow, 7, 2) == [49, 49]
    finally:
        rc.close()


def value_when_file_exists(path, v):
    """Runs on the engine: say it started, then wait (at most 2 minutes) for `path`."""
    import os
    import time

    open(path + ".started", "w").close()
    deadline = time.monotonic() + 120
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return v


def test_reply_of_a_task_in_flight_across_a_controller_restart_reaches_the_client(
        make_controller, make_engines, tmp_path):
    # ipyparallel drops such a reply ("reply for an unknown task") and the client waits forever.
    # The Python client sets no ZeroMQ identity: after the restart its DEALERs reconnect under
    # new routing ids, which the controller learns from the next request on the same socket.
    ctl = make_controller("--reuse", "--ping=300")
    eng = make_engines(ctl, 1)
    rc = connect(ctl, 1, eng)
    go = str(tmp_path / "go")
    probe = None
    try:
        lv = rc.load_balanced_view()
        first = lv.apply_async(value_when_file_exists, go, "first")
        wait_for(lambda: os.path.exists(go + ".started"), timeout=60, what="the first task running")
        ctl.proc.send_signal(signal.SIGKILL)
        ctl.proc.wait(10)
        ctl2 = make_controller("--restore", "--ping=300")
        second = lv.apply_async(pow, 3, 4)
        # the restarted controller has the second request (and with it the client's new route)
        probe = ctl2.client()
        wait_for(lambda: probe.db_query({"msg_id": second.msg_ids[0]}, keys=["msg_id"]), timeout=60,
                 interval=0.2, what="the second request recorded by the restarted controller")
        open(go, "w").close()
        assert first.get(timeout=60) == "first"
        assert second.get(timeout=60) == 81
        # and both are on record
        recs = probe.db_query({"msg_id": {"$in": first.msg_ids + second.msg_ids}}, keys=["msg_id", "completed"])
        assert len(recs) == 2 and all(r["completed"] for r in recs), recs
    finally:
        if probe is not None:
            probe.close()
        rc.close()
