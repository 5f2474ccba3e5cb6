"""rpar-controller with the real Python client and two real Python ipengines: direct views,
output capture, errors, queries and the task database."""

import json
import os
import time

import ipyparallel as ipp
import pytest

from conftest import connect, wait_for


def square(x):
    return x * x


def test_client_by_profile_name_alone(rpar_cluster):
    ctl, _, _ = rpar_cluster
    # IPYTHONDIR points at the cluster's dir; profile name only, as a user would.
    c = ipp.Client(profile="default")
    try:
        assert sorted(c.ids) == [0, 1]
    finally:
        c.close()


def test_apply_execute_push_pull(rpar_cluster):
    _, _, rc = rpar_cluster
    dv = rc[:]
    assert dv.apply_sync(lambda: 6 * 7) == [42, 42]
    dv.execute("import os; pid = os.getpid(); y = 10", block=True)
    pids = dv.pull("pid", block=True)
    assert len(set(pids)) == 2 and all(isinstance(p, int) for p in pids)
    dv.push({"a": 3, "b": [1, 2]}, block=True)
    assert dv.pull(("a", "b"), block=True) == [[3, [1, 2]], [3, [1, 2]]]
    assert rc[0].apply_sync(lambda y: y + 1, 41) == 42


def test_scatter_gather_map(rpar_cluster):
    _, _, rc = rpar_cluster
    dv = rc[:]
    dv.scatter("chunk", list(range(10)), block=True)
    parts = dv.pull("chunk", block=True)
    assert sorted(sum(parts, [])) == list(range(10))
    dv.execute("chunk = [c * 2 for c in chunk]", block=True)
    assert dv.gather("chunk", block=True) == [2 * i for i in range(10)]
    assert dv.map_sync(square, range(8)) == [i * i for i in range(8)]


def test_stdout_stderr_and_execute_result(rpar_cluster):
    _, _, rc = rpar_cluster
    ar = rc[:].execute("import sys; print('hello', 7); print('oops', file=sys.stderr)", block=False, silent=False)
    ar.get(timeout=30)
    ar.wait_for_output(timeout=30)
    assert all("hello 7" in s for s in ar.stdout), ar.stdout
    assert all("oops" in s for s in ar.stderr), ar.stderr
    ar = rc[0].execute("40 + 2", silent=False, block=False)
    ar.get(timeout=30)
    ar.wait_for_output(timeout=30)
    assert ar.execute_result["data"]["text/plain"] == "42"


def test_remote_errors(rpar_cluster):
    _, _, rc = rpar_cluster

    def boom():
        return 1 / 0

    with pytest.raises(ipp.RemoteError) as e:
        rc[0].apply_sync(boom)
    assert e.value.ename == "ZeroDivisionError"
    with pytest.raises(ipp.CompositeError) as e:
        rc[:].apply_sync(boom)
    assert len(e.value.elist) == 2
    assert {x[0] for x in e.value.elist} == {"ZeroDivisionError"}


def test_queue_status_and_clear(rpar_cluster):
    _, _, rc = rpar_cluster
    rc[:].apply_sync(lambda: None)
    qs = rc.queue_status()
    assert set(qs) >= {0, 1, "unassigned"}
    assert qs[0]["completed"] >= 1 and qs[0]["queue"] == 0
    v = rc.queue_status(targets=0, verbose=True)
    assert isinstance(v["completed"], list) and len(v["completed"]) >= 1
    rc[:].execute("zzz = 5", block=True)
    rc.clear(block=True)
    with pytest.raises(ipp.CompositeError):
        rc[:].pull("zzz", block=True)


def test_results_history_and_second_client(rpar_cluster):
    ctl, _, rc = rpar_cluster
    ar = rc[0].apply_async(square, 12)
    assert ar.get(timeout=30) == 144
    msg_id = ar.msg_ids[0]
    assert msg_id in rc.hub_history()
    status = rc.result_status([msg_id])
    assert msg_id in status["completed"]
    other = ctl.client()
    try:
        assert other.get_result(msg_id).get(timeout=30) == 144
    finally:
        other.close()


def test_db_query_operators(rpar_cluster):
    _, _, rc = rpar_cluster
    lv = rc.load_balanced_view()
    ars = [lv.apply_async(square, i) for i in range(4)]
    ids = [a.msg_ids[0] for a in ars]
    assert [a.get(timeout=30) for a in ars] == [0, 1, 4, 9]
    recs = rc.db_query({"msg_id": {"$in": ids}}, keys=["msg_id", "completed", "engine_uuid"])
    assert sorted(r["msg_id"] for r in recs) == sorted(ids)
    first = min(r["completed"] for r in recs)
    later = rc.db_query({"msg_id": {"$in": ids}, "completed": {"$gt": first}}, keys=["msg_id"])
    assert len(later) == 3
    assert len(rc.db_query({"msg_id": {"$in": ids}, "completed": {"$gte": first}}, keys=["msg_id"])) == 4
    assert len(rc.db_query({"msg_id": {"$in": ids}, "completed": {"$lt": first}}, keys=["msg_id"])) == 0
    assert len(rc.db_query({"msg_id": {"$in": ids}, "completed": {"$lte": first}}, keys=["msg_id"])) == 1
    assert len(rc.db_query({"msg_id": {"$eq": ids[0]}}, keys=["msg_id"])) == 1
    assert [r["msg_id"] for r in rc.db_query({"msg_id": {"$in": ids, "$nin": ids[1:]}}, keys=["msg_id"])] == ids[:1]
    assert len(rc.db_query({"msg_id": {"$in": ids}, "queue": {"$ne": "mux"}}, keys=["msg_id"])) == 4
    prefix = ids[0][:12]
    globbed = rc.db_query({"msg_id": {"$glob": prefix + "*"}}, keys=["msg_id"])
    assert set(ids) <= {r["msg_id"] for r in globbed}
    recs = rc.db_query({"msg_id": ids[2]}, keys=["result_buffers", "buffers"])
    assert len(recs) == 1 and recs[0]["result_buffers"] and recs[0]["buffers"]
    assert len(rc.db_query({"msg_id": {"$nin": ids}, "queue": "task", "submitted": {"$gte": first}})) == 0


def test_purge_and_resubmit(rpar_cluster):
    _, _, rc = rpar_cluster
    ar = rc[1].apply_async(square, 5)
    assert ar.get(timeout=30) == 25
    mid = ar.msg_ids[0]
    ar2 = rc.resubmit(mid)
    assert ar2.get(timeout=30) == [25]  # resubmit returns a multi-id AsyncHubResult
    rc.purge_results(mid)
    with pytest.raises(Exception):
        rc.get_result(mid).get(timeout=10)


def test_bad_query_type_gets_hub_error(rpar_cluster):
    import zmq
    from jupyter_client.session import Session

    ctl, _, _ = rpar_cluster
    info = json.loads(ctl.file("client").read_text())
    session = Session(key=info["key"].encode(), signature_scheme=info["signature_scheme"])
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(f"{info['interface']}:{info['registration']}")
    try:
        sent = session.send(sock, "bogus_request", content={})
        assert sock.poll(10000), "no reply from the hub"
        _, reply = session.recv(sock, mode=0)
        assert reply["parent_header"]["msg_id"] == sent["header"]["msg_id"]
        assert reply["msg_type"] == "hub_error"
        assert reply["content"]["status"] == "error"
        assert "bogus_request" in reply["content"]["evalue"]
        # a message signed with the wrong key gets nothing at all
        bad = Session(key=b"wrong-key")
        bad.send(sock, "connection_request", content={})
        assert not sock.poll(1000)
    finally:
        sock.close()


def test_px_magic_in_ipython(rpar_cluster):
    """%px and %%px in a real IPython shell (the client side of the magics is ipyparallel's)."""
    import subprocess
    import sys

    code = (
        "import ipyparallel as ipp\n"
        "rc = ipp.Client(profile='default')\n"
        "rc.wait_for_engines(2, timeout=30)\n"
        "rc[:].activate()\n"
        "ip = get_ipython()\n"
        "ip.run_line_magic('px', 'px_sq = 7 * 6')\n"
        "ar = ip.run_cell_magic('px', '--noblock', 'import os; print(\"PX-OUT\", os.getpid())')\n"
        "ar.get(timeout=30); ar.wait_for_output(timeout=30)\n"
        "print('STDOUT', ar.stdout)\n"
        "print('PULLED', rc[:].pull('px_sq', block=True))\n"
        "rc.close()\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "IPython", "--quick", "--no-banner", "--colors=NoColor", "-c", code],
        capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PULLED [42, 42]" in r.stdout, r.stdout + r.stderr
    assert r.stdout.count("PX-OUT") == 2, r.stdout + r.stderr
