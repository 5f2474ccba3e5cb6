"""CurveZMQ (ipyparallel >= 7.1: `--IPController.enable_curve=True` / `IPP_ENABLE_CURVE=1`).

rpar-controller publishes its public key as `curve_serverkey` and every socket it binds speaks the
CURVE mechanism (read here from the ZMTP greeting each one sends); the real Client, real Python
ipengines and `mpiexec -n 2 rpar-engine` connect with it and compute; rpar-engine also works
with ipyparallel's own ipcontroller under CURVE. A client without the server key, or with
another one, gets no answer."""

import json
import socket
import subprocess
import sys

import ipyparallel as ipp
import pytest
import zmq

from conftest import connect, read_json
from util_engine import EngineJob

PORTS_CLIENT = ("registration", "control", "mux", "task", "iopub", "notification", "broadcast")
PORTS_ENGINE = ("registration", "control", "mux", "task", "iopub", "hb_ping", "hb_pong")


def zmtp_mechanism(port, host="127.0.0.1"):
    """The security mechanism a ZeroMQ socket announces in its ZMTP 3.x greeting (signature,
    version, 20-byte mechanism name, as-server, filler: 64 bytes). libzmq sends the mechanism once
    it has the peer's signature and major version, so only those are sent: the socket never
    learns which mechanism this peer would use."""
    with socket.create_connection((host, port), timeout=10) as s:
        s.settimeout(10)
        s.sendall(b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03")
        got = b""
        while len(got) < 64:
            chunk = s.recv(64 - len(got))
            if not chunk:
                break
            got += chunk
    assert len(got) >= 32, f"port {port}: short ZMTP greeting {got!r}"
    return got[12:32].rstrip(b"\0").decode()


def curve_files(ctl):
    client, engine = read_json(ctl.file("client")), read_json(ctl.file("engine"))
    key = client["curve_serverkey"]
    assert isinstance(key, str) and len(key) == 40, client
    assert engine["curve_serverkey"] == key
    # as ipyparallel: CURVE protects the messages, the HMAC key is left empty
    assert client["key"] == "" and engine["key"] == ""
    return client, engine


def test_client_and_python_engines_over_curve(make_controller, make_engines):
    ctl = make_controller("--ping=500", "--IPController.enable_curve=True")
    client, engine = curve_files(ctl)
    for port in [client[p] for p in PORTS_CLIENT] + [engine[p] for p in PORTS_ENGINE] + engine["broadcast"]:
        assert zmtp_mechanism(port) == "CURVE", port
    eng = make_engines(ctl, 2)
    rc = connect(ctl, 2, eng)
    try:
        assert rc[:].apply_sync(lambda x: x * 6, 7) == [42, 42]
        assert rc.load_balanced_view().map_sync(lambda x: x * x, range(10)) == [x * x for x in range(10)]
        rc[:].push({"word": "curve"}, block=True)
        assert rc[:].pull("word", block=True) == ["curve", "curve"]
    finally:
        rc.close()
    assert eng.output().count("Using CurveZMQ security") == 2, eng.output()


@pytest.mark.parametrize("kind,transport", [("rpar", "native"), ("rpar", "compat"), ("python", "compat")])
def test_rpar_engine_over_curve(make_controller, kind, transport):
    """IPP_ENABLE_CURVE=1 turns it on (in both controllers); rank 0 connects as a CURVE client,
    on either transport."""
    ctl = make_controller("--ip=127.0.0.1", "--ping=500", kind=kind, env={"IPP_ENABLE_CURVE": "1"})
    client, engine = curve_files(ctl)
    assert zmtp_mechanism(client["registration"]) == "CURVE"
    if transport == "native":
        assert zmtp_mechanism(engine["rpar_native"]["port"]) == "CURVE"
    job = EngineJob("openmpi", 2, ctl.profile_dir, args=[f"--transport={transport}"])
    try:
        rc = connect(ctl, 2, job)
        try:
            ranks = rc[:].apply_sync(lambda: __import__("mpi4py.MPI").MPI.COMM_WORLD.Get_rank())
            assert ranks == [0, 1]
            assert rc[:].apply_sync(lambda x: x + 1, 41) == [42, 42]
        finally:
            rc.close()
        assert "Using CurveZMQ security" in job.output(), job.output()
        if transport == "native":
            assert "native transport: one connection for the job's" in job.output(), job.output()
    finally:
        job.stop()


@pytest.mark.parametrize("serverkey", ["none", "other"])
def test_client_without_the_server_key_gets_nothing(make_controller, tmp_path, monkeypatch, serverkey):
    ctl = make_controller("--ping=500", "--IPController.enable_curve=True")
    client, _ = curve_files(ctl)
    monkeypatch.delenv("IPP_CURVE_SERVERKEY", raising=False)
    if serverkey == "none":
        client["curve_serverkey"] = None
    else:
        other = zmq.curve_keypair()[0].decode()
        assert other != client["curve_serverkey"]
        client["curve_serverkey"] = other
    f = tmp_path / f"client-{serverkey}.json"
    f.write_text(json.dumps(client))
    # In a process of its own: the handshake fails, libzmq drops the connection for good, and
    # the client's connection_request then either times out or (when the drop comes first) its
    # send blocks for ever. Either way no reply may come.
    probe = ("import ipyparallel as ipp, sys\n"
             "try:\n    ipp.Client(sys.argv[1], timeout=3)\n"
             "except TimeoutError:\n    print('TIMED OUT')\n"
             "else:\n    print('CONNECTED')\n")
    try:
        out = subprocess.run([sys.executable, "-c", probe, str(f)], capture_output=True, text=True,
                             timeout=30).stdout
        assert out.strip() == "TIMED OUT", out
    except subprocess.TimeoutExpired as e:
        assert b"CONNECTED" not in (e.stdout or b""), e.stdout
    # the controller is fine and answers a client that has the key
    good = tmp_path / "client-good.json"
    good.write_text(ctl.file("client").read_text())
    rc = ipp.Client(str(good), timeout=20)
    try:
        assert rc.ids == []
    finally:
        rc.close()


def test_cluster_start_and_status_over_curve(tmp_path):
    """`rpar cluster start` waits for the engines through the hub, and `rpar cluster status` asks
    it: both must speak CURVE when the profile's controller does (they used to wait in vain)."""
    from util_cluster import RparEnv

    e = RparEnv(tmp_path)
    try:
        e.create_profile()
        (e.profile_dir / "ipcontroller_config.py").write_text("c.IPController.enable_curve = True\n")
        r = e.start("--n=2", timeout=120)
        assert "2 engines registered" in r.stderr
        client = read_json(e.profile_dir / "security" / "ipcontroller-client.json")
        assert len(client["curve_serverkey"]) == 40
        st = json.loads(e.rpar("cluster", "status", "--profile=default", "--json").stdout)
        # asked through the hub's CURVE socket (no metrics server is configured)
        assert st["source"] == "hub" and st["engines"]["registered"] == 2, st
        assert [row["id"] for row in st["engine_rows"]] == [0, 1], st
        rc = e.client(n=2)
        try:
            assert rc[:].apply_sync(pow, 3, 2) == [9, 9]
        finally:
            rc.close()
    finally:
        e.cleanup()
