"""rpar-controller's files, flags and configuration: connection files (names, fields, 0600,
removal), --reuse, IPP_* environment, and the seed manual's ipcontroller_config.py lines."""

import json
import os
import stat
import subprocess
import time

import ipyparallel as ipp
import pytest

from conftest import Controller, connect, rpar_bin, read_json, wait_for


def test_connection_files_fields_mode_and_removal(make_controller):
    ctl = make_controller(cluster_id="abc")
    for kind in ("client", "engine"):
        p = ctl.file(kind)
        assert p.name == f"ipcontroller-abc-{kind}.json"
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    c = read_json(ctl.file("client"))
    e = read_json(ctl.file("engine"))
    assert set(c) >= {"ssh", "interface", "registration", "control", "mux", "task", "task_scheme",
                      "iopub", "notification", "broadcast", "key", "location", "pack", "unpack",
                      "signature_scheme"}
    assert set(e) >= {"interface", "registration", "control", "mux", "task", "iopub", "hb_ping",
                      "hb_pong", "broadcast", "key", "signature_scheme"}
    assert c["key"] == e["key"] and c["registration"] == e["registration"]
    assert isinstance(e["broadcast"], list) and isinstance(c["broadcast"], int)
    assert c["interface"] == "tcp://127.0.0.1", "loopback by default"
    assert ctl.stop() == 0
    assert not ctl.file("client").exists() and not ctl.file("engine").exists()


def test_reuse_keeps_key_and_ports(make_controller, make_engines):
    ctl = make_controller("--reuse", "--ping=300")
    first = read_json(ctl.file("client"))
    ctl.stop()
    assert ctl.file("client").exists(), "--reuse keeps the files"
    ctl2 = make_controller("--reuse", "--ping=300")
    assert read_json(ctl2.file("client")) == first
    eng = make_engines(ctl2, 1)
    rc = connect(ctl2, 1, eng)
    try:
        assert rc[0].apply_sync(lambda: "again") == "again"
    finally:
        rc.close()


def test_environment_names_profile_and_cluster(ipython_dir, tmp_path):
    prof = tmp_path / "envprofile"
    env = dict(os.environ, IPP_PROFILE_DIR=str(prof), IPP_CLUSTER_ID="envid")
    p = subprocess.Popen([rpar_bin("rpar-controller")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: (prof / "security" / "ipcontroller-envid-client.json").exists(), what="files from IPP_* env")
        assert (prof / "log").is_dir() and (prof / "pid").is_dir() and (prof / "startup").is_dir()
        assert stat.S_IMODE((prof / "security").stat().st_mode) == 0o700
    finally:
        p.terminate()
        p.wait(10)


def test_seed_config_lines(ipython_dir, make_engines):
    prof = ipython_dir / "profile_seed"
    prof.mkdir()
    # The seed manual's controller lines, old class names and all.
    (prof / "ipcontroller_config.py").write_text(
        "import socket\n"
        "c.HubFactory.ip = '*'\n"
        "c.HubFactory.location = '127.0.0.1'\n"
        "c.HubFactory.db_class = 'IPython.parallel.controller.sqlitedb.SQLiteDB'\n"
        "c.SQLiteDB.table = 'tasks'\n"
        "c.HeartMonitor.period = 400\n"
    )
    ctl = Controller(prof, [])
    try:
        c = read_json(ctl.file("client"))
        assert c["interface"] == "tcp://0.0.0.0"
        assert c["location"] == "127.0.0.1"
        eng = make_engines(ctl, 1)
        rc = ipp.Client(profile="seed")
        try:
            rc.wait_for_engines(1, timeout=60)
            ar = rc[0].apply_async(lambda: 7)
            assert ar.get(timeout=30) == 7
            assert (prof / "tasks.db").exists(), "SQLiteDB selected by the seed's class path"
            assert rc.db_query({"msg_id": ar.msg_ids[0]}, keys=["msg_id"])[0]["msg_id"] == ar.msg_ids[0]
        finally:
            rc.close()
    finally:
        ctl.stop()


def test_json_config_and_command_line_precedence(ipython_dir):
    prof = ipython_dir / "profile_js"
    prof.mkdir()
    (prof / "ipcontroller_config.json").write_text(json.dumps({"IPController": {"location": "from-json"},
                                                               "TaskScheduler": {"scheme_name": "lru"}}))
    ctl = Controller(prof, ["--scheme=twobin"])
    try:
        c = read_json(ctl.file("client"))
        assert c["location"] == "from-json"
        assert c["task_scheme"] == "twobin", "command line over file"
    finally:
        ctl.stop()


@pytest.mark.parametrize(
    "line, needle",
    [
        ("c.Bogus.thing = 1", "Bogus"),
        ("c.HeartMonitor.period = 'often'", "HeartMonitor.period"),
        ("c.IPEngine.timeout = 3", "IPEngine"),
        ("c.DictDB.record_limit = -5", "DictDB.record_limit = -5"),
    ],
)
def test_bad_config_line_names_file_and_line(ipython_dir, line, needle):
    prof = ipython_dir / "profile_bad"
    prof.mkdir()
    cfg = prof / "ipcontroller_config.py"
    cfg.write_text("# a comment\nc.HubFactory.ip = '127.0.0.1'\n" + line + "\n")
    r = subprocess.run([rpar_bin("rpar-controller"), f"--profile-dir={prof}"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    err = r.stderr
    assert str(cfg) in err and ":3" in err, err
    assert needle in err, err
    assert not (prof / "security" / "ipcontroller-client.json").exists()


def test_bad_flag_is_a_clear_error():
    r = subprocess.run([rpar_bin("rpar-controller"), "--bogus-flag"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "--bogus-flag" in r.stderr


def test_ports_ssh_and_enginessh_flags(make_controller):
    ctl = make_controller("--ports=23100-23130", "--ssh=me@login.example", "--enginessh=me@gw.example")
    c = read_json(ctl.file("client"))
    e = read_json(ctl.file("engine"))
    ports = [c[k] for k in ("registration", "control", "mux", "task", "iopub", "notification", "broadcast")]
    ports += [e[k] for k in ("control", "mux", "task", "iopub", "hb_ping", "hb_pong")] + e["broadcast"]
    assert all(23100 <= p <= 23130 for p in ports), ports
    assert len(set(ports)) == len(ports)
    assert c["ssh"] == "me@login.example" and e["ssh"] == "me@gw.example"


def test_restore_after_a_controller_crash(make_controller, make_engines):
    import signal

    ctl = make_controller("--reuse", "--ping=300")
    eng = make_engines(ctl, 2)
    rc = connect(ctl, 2, eng)
    rc.close()
    state_file = ctl.profile_dir / "log" / "engines.json"
    # written right after the registration notifications go out
    wait_for(lambda: state_file.exists() and sorted(read_json(state_file)["engines"]) == ["0", "1"],
             timeout=10, what="both engines in log/engines.json")
    state = read_json(state_file)
    ctl.proc.send_signal(signal.SIGKILL)
    ctl.proc.wait(10)
    # same ports and key; engines reconnect by themselves and are known at once
    ctl2 = make_controller("--restore", "--ping=300")
    rc = ctl2.client()
    try:
        rc.wait_for_engines(2, timeout=30)
        # the same engines (uuids) under the same ids: restored, not registered anew
        assert {str(k): v for k, v in rc._engines.items()} == state["engines"]
        assert rc[:].apply_async(lambda: "back").get(timeout=60) == ["back", "back"]
    finally:
        rc.close()


def test_request_waits_for_an_engine_socket_that_connects_late(make_controller):
    """Every socket of an engine (re)connects on its own timer: after a controller restart an
    engine can answer heartbeats, and be registered, before its MUX socket is back. A request
    routed to it in that gap must wait for the socket, not vanish (it used to, and the client
    waited forever). The engine here is a protocol-level one whose MUX socket connects only
    after the request was sent; the result it computes must reach the client."""
    import threading
    import uuid as uuidlib

    import zmq
    from ipyparallel.serialize import serialize_object, unpack_apply_message
    from jupyter_client.session import Session

    ctl = make_controller("--ping=200")
    info = json.loads(ctl.file("engine").read_text())
    url = lambda port: f"{info['interface']}:{port}"  # noqa: E731
    session = Session(key=info["key"].encode(), signature_scheme=info["signature_scheme"])
    ident = str(uuidlib.uuid4()).encode()
    ctx = zmq.Context()
    reg = ctx.socket(zmq.DEALER)
    reg.identity = ident
    reg.connect(url(info["registration"]))
    ping = ctx.socket(zmq.SUB)
    ping.subscribe(b"")
    ping.connect(url(info["hb_ping"]))
    pong = ctx.socket(zmq.DEALER)
    pong.identity = ident
    pong.connect(url(info["hb_pong"]))
    stop = threading.Event()

    def heart():
        while not stop.is_set():
            if ping.poll(100):
                pong.send_multipart(ping.recv_multipart())

    beat = threading.Thread(target=heart, daemon=True)
    rc = None
    mux = None
    try:
        session.send(reg, "registration_request", content={"uuid": ident.decode()})
        assert reg.poll(10000), "no registration_reply"
        _, reply = session.recv(reg, mode=0)
        assert reply["content"]["status"] == "ok", reply
        eid = reply["content"]["id"]
        beat.start()
        rc = ctl.client()
        rc.wait_for_engines(1, timeout=30)
        # the hub knows the engine; its MUX socket is not connected yet
        ar = rc[eid].apply_async(lambda a, b: a * b, 6, 7)
        time.sleep(1.0)
        mux = ctx.socket(zmq.ROUTER)
        mux.identity = ident
        mux.connect(url(info["mux"]))
        assert mux.poll(10000), "the request never reached the late engine socket:\n" + ctl.output()
        idents, msg = session.recv(mux, mode=0, content=True, copy=True)
        assert msg["msg_type"] == "apply_request"
        f, args, kwargs = unpack_apply_message(msg["buffers"])
        result = f(*args, **kwargs)
        session.send(
            mux, "apply_reply", content={"status": "ok"}, parent=msg, ident=idents,
            buffers=serialize_object(result),
            metadata={"status": "ok", "engine": ident.decode(), "dependencies_met": True,
                      "started": msg["header"]["date"]},
        )
        assert ar.get(timeout=30) == 42
    finally:
        stop.set()
        if rc is not None:
            rc.close()
        if beat.is_alive():
            beat.join(5)
        for s in (reg, ping, pong, mux):
            if s is not None:
                s.close(linger=0)
        ctx.term()


def test_listen_backlog_takes_a_big_job_connecting_at_once(make_controller):
    """An MPI job connects all its engines at once (six connections per engine). With ZeroMQ's
    default listen backlog of 100, the kernel dropped the surplus SYNs of a 300-rank job and the
    last engines came back only after TCP's retry back-off, past the registration timeout. The
    controller listens with a backlog of 4096 (or the kernel's somaxconn, if lower): `ss` shows
    a listening socket's backlog in its Send-Q column."""
    ctl = make_controller("--ip=127.0.0.1")
    info = json.loads(ctl.file("engine").read_text())
    somaxconn = int(open("/proc/sys/net/core/somaxconn").read())
    want = min(4096, somaxconn)
    for name in ("registration", "hb_pong", "mux", "task", "control", "iopub"):
        out = subprocess.run(["ss", "-Hltn", f"sport = :{info[name]}"], capture_output=True,
                             text=True, check=True).stdout.split()
        assert out and out[0] == "LISTEN", (name, out)
        assert int(out[2]) == want, f"{name}: backlog {out[2]}, want {want}"


def test_engine_registered_before_a_client_subscribes_is_not_lost(make_controller):
    """The Python client asks for the engine list (connection_request) and only then connects its
    notification SUB. An engine registered between the two reached it by neither, and
    `wait_for_engines` waited forever (seen in CI: rpar registers engines within milliseconds of
    their first heartbeat, so a client connecting at that moment hit the gap). Here the gap is
    made wide on purpose, in the client's order: reply without the engine, registration, then
    the subscription, which must bring the registration_notification."""
    import threading
    import uuid as uuidlib

    import zmq
    from jupyter_client.session import Session

    ctl = make_controller("--ping=200")
    einfo = json.loads(ctl.file("engine").read_text())
    cinfo = json.loads(ctl.file("client").read_text())
    url = lambda info, port: f"{info['interface']}:{port}"  # noqa: E731
    session = Session(key=cinfo["key"].encode(), signature_scheme=cinfo["signature_scheme"])
    ctx = zmq.Context()
    socks = []

    def sock(kind, port, info, ident=None):
        s = ctx.socket(kind)
        if ident:
            s.identity = ident
        s.connect(url(info, port))
        socks.append(s)
        return s

    stop = threading.Event()
    beat = None
    try:
        query = sock(zmq.DEALER, cinfo["registration"], cinfo)

        def engines():
            session.send(query, "connection_request", content={})
            assert query.poll(10000), "no connection_reply"
            _, reply = session.recv(query, mode=0)
            return reply["content"]["engines"]

        assert engines() == {}
        # an engine registers and its heart answers
        ident = str(uuidlib.uuid4()).encode()
        reg = sock(zmq.DEALER, einfo["registration"], einfo, ident)
        ping = sock(zmq.SUB, einfo["hb_ping"], einfo)
        ping.subscribe(b"")
        pong = sock(zmq.DEALER, einfo["hb_pong"], einfo, ident)

        def heart():
            while not stop.is_set():
                if ping.poll(100):
                    pong.send_multipart(ping.recv_multipart())

        beat = threading.Thread(target=heart, daemon=True)
        beat.start()
        session.send(reg, "registration_request", content={"uuid": ident.decode()})
        wait_for(lambda: engines() != {}, timeout=20, what="the engine registered")
        # only now does the "client" subscribe
        notes = sock(zmq.SUB, cinfo["notification"], cinfo)
        notes.subscribe(b"")
        assert notes.poll(10000), "no registration_notification for a subscriber that came late"
        _, msg = session.recv(notes, mode=0)
        assert msg["msg_type"] == "registration_notification"
        assert msg["content"] == {"id": 0, "uuid": ident.decode()}
    finally:
        stop.set()
        if beat is not None:
            beat.join(5)
        for s in socks:
            s.close(linger=0)
        ctx.term()
