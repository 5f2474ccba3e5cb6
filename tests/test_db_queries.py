"""The task database through the real Python client: rpar-controller (SQLite and memory
backends) with two real Python ipengines. db_query with every operator and key selection,
hub_history, result_status, get_result from a second client, purge and resubmit; NoDB's
error; a controller restart with --reuse reading the earlier session's SQLite records."""

import os
from datetime import datetime, timedelta, timezone

import ipyparallel as ipp
import pytest

from conftest import wait_for
from util_db import cluster, echo, fail, shout, wait_completed

# RPAR_DB_TEST_KIND=python runs the same tests against ipyparallel's own ipcontroller, to check
# the tests themselves (it fails where ipyparallel has known bugs, e.g. DictDB's $gt).
KIND = os.environ.get("RPAR_DB_TEST_KIND", "rpar")


@pytest.fixture(scope="module", params=["--sqlitedb", "--dictdb"])
def db_cluster(request, tmp_path_factory):
    ipdir = tmp_path_factory.mktemp("ipython")
    old = os.environ.get("IPYTHONDIR")
    os.environ["IPYTHONDIR"] = str(ipdir)
    try:
        with cluster(ipdir, [request.param, "--ping=500"], kind=KIND) as (ctl, eng, rc):
            lv = rc.load_balanced_view()
            # A known set of records: 3 labelled load-balanced tasks, 2 direct, 1 failing.
            ars = {
                "lb": [lv.apply_async(shout, f"t{i}") for i in range(3)],
                "mux": [rc[i].apply_async(echo, i) for i in range(2)],
            }
            with lv.temp_flags(label="special-task"):
                ars["labelled"] = [lv.apply_async(echo, "L")]
            ars["bad"] = [lv.apply_async(fail, "boom")]
            for group in ars.values():
                for ar in group:
                    ar.wait(30)
            ids = {k: [m for ar in v for m in ar.msg_ids] for k, v in ars.items()}
            wait_completed(rc, sum(ids.values(), []))
            yield ctl, rc, ids, request.param
    finally:
        if old is None:
            os.environ.pop("IPYTHONDIR", None)
        else:
            os.environ["IPYTHONDIR"] = old


def q_ids(rc, query, keys=None):
    return {r["msg_id"] for r in rc.db_query(query, keys=keys or ["msg_id"])}


def test_equality_and_ne(db_cluster):
    _, rc, ids, _ = db_cluster
    everything = set(sum(ids.values(), []))
    assert q_ids(rc, {"queue": "task"}) == set(ids["lb"] + ids["labelled"] + ids["bad"])
    assert q_ids(rc, {"queue": {"$eq": "mux"}}) == set(ids["mux"])
    assert q_ids(rc, {"queue": {"$ne": "mux"}}) & everything == set(ids["lb"] + ids["labelled"] + ids["bad"])
    assert q_ids(rc, {"label": "special-task"}) == set(ids["labelled"])
    assert q_ids(rc, {"label": None}) & everything == everything - set(ids["labelled"])


def test_date_comparisons(db_cluster):
    _, rc, ids, _ = db_cluster
    recs = rc.db_query({"msg_id": {"$in": ids["lb"]}}, keys=["submitted"])
    assert all(isinstance(r["submitted"], datetime) and r["submitted"].tzinfo for r in recs)
    recs.sort(key=lambda r: r["submitted"])
    first, last = recs[0], recs[-1]
    t0 = first["submitted"]
    # $gt is strictly greater (ipyparallel's DictDB gets this backwards).
    assert first["msg_id"] not in q_ids(rc, {"submitted": {"$gt": t0}})
    assert last["msg_id"] in q_ids(rc, {"submitted": {"$gt": t0}})
    assert first["msg_id"] in q_ids(rc, {"submitted": {"$gte": t0}})
    assert q_ids(rc, {"submitted": {"$lt": t0}}).isdisjoint(ids["lb"])
    assert first["msg_id"] in q_ids(rc, {"submitted": {"$lte": t0}})
    future = datetime.now(timezone.utc) + timedelta(days=1)
    assert q_ids(rc, {"submitted": {"$gt": future}}) == set()
    assert set(ids["lb"]) <= q_ids(rc, {"completed": {"$lt": future, "$gte": t0 - timedelta(minutes=5)}})


def test_in_nin_glob(db_cluster):
    _, rc, ids, _ = db_cluster
    some = ids["lb"][:2]
    assert q_ids(rc, {"msg_id": {"$in": some}}) == set(some)
    assert q_ids(rc, {"msg_id": {"$nin": some}}).isdisjoint(some)
    assert set(ids["lb"][2:]) <= q_ids(rc, {"msg_id": {"$nin": some}})
    assert q_ids(rc, {"label": {"$glob": "special-*"}}) == set(ids["labelled"])
    assert q_ids(rc, {"label": {"$glob": "Special-*"}}) == set()
    assert set(ids["lb"]) <= q_ids(rc, {"stdout": {"$glob": "out:t?*"}})
    prefix = ids["lb"][0][:8]
    assert ids["lb"][0] in q_ids(rc, {"msg_id": {"$glob": prefix + "*"}})


def test_exists_and_nested_paths(db_cluster):
    _, rc, ids, _ = db_cluster
    assert set(ids["bad"]) <= q_ids(rc, {"result_content.status": "error"})
    assert q_ids(rc, {"result_content.status": "error"}).isdisjoint(ids["lb"])
    assert set(ids["lb"]) <= q_ids(rc, {"completed": {"$exists": True}})


def test_key_selection_and_buffers(db_cluster):
    _, rc, ids, _ = db_cluster
    mid = ids["lb"][0]
    (rec,) = rc.db_query({"msg_id": mid}, keys=["header", "stdout", "completed"])
    assert set(rec) == {"msg_id", "header", "stdout", "completed"}
    assert rec["header"]["msg_id"] == mid
    assert isinstance(rec["header"]["date"], datetime)
    assert isinstance(rec["completed"], datetime)
    assert "out:t0" in rec["stdout"]
    # All fields but the buffers when keys is None.
    (full,) = rc.db_query({"msg_id": mid})
    assert "buffers" not in full and "result_buffers" not in full
    assert {"submitted", "started", "received", "engine_uuid", "result_header", "stderr", "label"} <= set(full)
    assert "err:t0" in full["stderr"]
    # Buffers come back as frames, re-linked by the client in record order.
    recs = rc.db_query({"msg_id": {"$in": ids["lb"]}}, keys=["buffers", "result_buffers"])
    assert len(recs) == 3
    for r in recs:
        assert r["buffers"] and r["result_buffers"], r
        obj, _ = ipp.serialize.deserialize_object(r["result_buffers"])
        assert obj.startswith("t"), obj


def test_bad_queries_say_why(db_cluster):
    _, rc, _, _ = db_cluster
    with pytest.raises(Exception, match="no_such_field"):
        rc.db_query({"no_such_field": 1})
    with pytest.raises(Exception, match=r"\$regex"):
        rc.db_query({"msg_id": {"$regex": "x"}})


def test_history_and_result_status(db_cluster):
    _, rc, ids, _ = db_cluster
    hist = rc.hub_history()
    everything = sum(ids.values(), [])
    assert set(everything) <= set(hist)
    subs = {r["msg_id"]: r["submitted"] for r in rc.db_query({"msg_id": {"$in": hist}}, keys=["submitted"])}
    assert [subs[m] for m in hist] == sorted(subs[m] for m in hist)
    st = rc.result_status(everything, status_only=True)
    assert sorted(st["completed"]) == sorted(everything) and st["pending"] == []


def test_get_result_from_a_second_client(db_cluster):
    ctl, _, ids, _ = db_cluster
    other = ctl.client()
    try:
        ar = other.get_result(ids["lb"])
        assert sorted(ar.get(timeout=30)) == ["t0", "t1", "t2"]
        ar = other.get_result(ids["labelled"][0])
        assert ar.get(timeout=30) == "L"
        with pytest.raises(ipp.RemoteError) as e:
            other.get_result(ids["bad"][0]).get(timeout=30)
        assert e.value.ename == "ValueError"
    finally:
        other.close()


def test_resubmit(db_cluster):
    _, rc, ids, _ = db_cluster
    ar = rc.resubmit(ids["lb"][:2])
    assert sorted(ar.get(timeout=60)) == ["t0", "t1"]
    new_ids = ar.msg_ids
    assert set(new_ids).isdisjoint(ids["lb"])
    olds = rc.db_query({"msg_id": {"$in": ids["lb"][:2]}}, keys=["resubmitted"])
    assert sorted(r["resubmitted"] for r in olds) == sorted(new_ids)
    assert q_ids(rc, {"msg_id": {"$in": new_ids}}) == set(new_ids)


def test_purge(db_cluster):
    _, rc, ids, _ = db_cluster
    lv = rc.load_balanced_view()
    ar = lv.map_async(echo, range(3))
    ar.get(timeout=30)
    wait_completed(rc, ar.msg_ids)
    rc.purge_results(jobs=ar.msg_ids[:1])
    assert q_ids(rc, {"msg_id": {"$in": ar.msg_ids}}) == set(ar.msg_ids[1:])
    rc.purge_hub_results("all")
    wait_for(lambda: q_ids(rc, {"completed": {"$ne": None}}) == set(), timeout=10, what="purge")
    assert not set(ar.msg_ids) & set(rc.hub_history())


def reverse(b):
    return b[::-1]


def test_big_buffers_round_trip_and_are_recorded(db_cluster):
    """1 MiB arguments and results (big enough that the controller shares them between the
    frames it sends and the records instead of copying them) cross load-balanced and direct
    views intact, and the records hold them: db_query, get_result from a second client and
    resubmit all see the same bytes."""
    ctl, rc, _, _ = db_cluster
    data = os.urandom(1 << 20)
    lv = rc.load_balanced_view()
    ars = [lv.apply_async(reverse, data) for _ in range(4)] + [rc[i].apply_async(reverse, data) for i in (0, 1)]
    for ar in ars:
        assert ar.get(timeout=60) == data[::-1]
    mids = [ar.msg_ids[0] for ar in ars]
    wait_completed(rc, mids)
    recs = rc.db_query({"msg_id": {"$in": mids}}, keys=["buffers", "result_buffers"])
    assert len(recs) == len(mids)
    for r in recs:
        f, args, _ = ipp.serialize.unpack_apply_message(r["buffers"])
        assert args == (data,), r["msg_id"]
        assert ipp.serialize.deserialize_object(r["result_buffers"])[0] == data[::-1], r["msg_id"]
    other = ctl.client()
    try:
        assert other.get_result(mids).get(timeout=60) == [data[::-1]] * len(mids)
    finally:
        other.close()
    assert rc.resubmit(mids[:1]).get(timeout=60) == [data[::-1]]


def test_nodb_errors_say_how_to_enable(make_controller):
    ctl = make_controller("--nodb", kind=KIND)
    rc = ctl.client()
    try:
        with pytest.raises(Exception, match="--sqlitedb"):
            rc.db_query({})
        with pytest.raises(Exception, match="NoDB"):
            rc.hub_history()
    finally:
        rc.close()


def test_restart_with_reuse_reads_old_records(ipython_dir):
    args = ["--sqlitedb", "--reuse", "--SQLiteDB.table=persist", "--ping=500"]
    with cluster(ipython_dir, args, n_engines=1, kind=KIND) as (ctl, _, rc):
        lv = rc.load_balanced_view()
        ars = [lv.apply_async(echo, x) for x in "abc"]
        assert [a.get(timeout=30) for a in ars] == ["a", "b", "c"]
        old = [a.msg_ids[0] for a in ars]
        wait_completed(rc, old)
        profile = ctl.profile_dir
    assert (profile / "tasks.db").exists()
    with cluster(ipython_dir, args, n_engines=0, kind=KIND) as (ctl2, _, rc2):
        assert set(old) <= set(rc2.hub_history())
        recs = rc2.db_query({"msg_id": {"$in": old}}, keys=["completed", "result_buffers"])
        assert len(recs) == 3 and all(r["completed"] for r in recs)
        assert sorted(rc2.get_result(old).get(timeout=30)) == ["a", "b", "c"]
