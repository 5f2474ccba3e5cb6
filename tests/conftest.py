"""Shared fixtures for rpar's integration tests.

Everything here starts REAL processes: the rpar binaries from target/, the Python
`ipcontroller` / `ipengine` from the ipyparallel package, and the real `ipyparallel.Client`.
Each test gets its own IPYTHONDIR in a temporary directory, so nothing touches ~/.ipython.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("RPAR_BIN_DIR", ROOT / "target" / "debug"))


def rpar_bin(name):
    """Path of an rpar binary built by cargo."""
    p = BIN / name
    if not p.exists():
        pytest.fail(f"{p} is missing: run `cargo build --workspace` first")
    return str(p)


def wait_for(pred, timeout=30.0, interval=0.05, what="condition"):
    """Poll `pred` until it returns a true value; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop_process(p, timeout=10):
    """SIGTERM, then SIGKILL; reap."""
    if p.poll() is not None:
        return p.returncode
    try:
        p.send_signal(signal.SIGTERM)
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.wait(timeout)


class Controller:
    """A running controller (rpar-controller or Python ipcontroller) in its own profile dir."""

    def __init__(self, profile_dir, args=(), kind="rpar", cluster_id="", env=None, prefix=()):
        self.profile_dir = Path(profile_dir)
        self.cluster_id = cluster_id
        self.kind = kind
        self.env = dict(os.environ, **(env or {}))
        self.log_path = self.profile_dir.parent / f"{kind}-controller-{time.monotonic_ns()}.log"
        if kind == "rpar":
            cmd = [rpar_bin("rpar-controller")]
        else:
            cmd = [sys.executable, "-m", "ipyparallel.controller"]
        cmd += [f"--profile-dir={self.profile_dir}"]
        if cluster_id:
            cmd += [f"--cluster-id={cluster_id}"]
        cmd += list(args)
        cmd = list(prefix) + cmd  # e.g. prlimit, to start it under other limits
        self.cmd = cmd
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        wait_for(self._ready, timeout=60, what=f"connection files of {cmd}")

    def file(self, kind):
        name = f"ipcontroller-{self.cluster_id}-{kind}.json" if self.cluster_id else f"ipcontroller-{kind}.json"
        return self.profile_dir / "security" / name

    def _ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"controller exited with {self.proc.returncode}:\n{self.output()}")
        return self.file("client").exists() and self.file("engine").exists()

    def output(self):
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def client(self, **kw):
        import ipyparallel as ipp

        return ipp.Client(str(self.file("client")), **kw)

    def stop(self):
        rc = stop_process(self.proc)
        self.log.close()
        return rc


def engine_env(extra=None):
    """Environment for engines: functions defined in test modules are pickled by reference,
    so engines must be able to import the test modules."""
    env = dict(os.environ, **(extra or {}))
    here = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Engines:
    """A set of real Python ipengines (each with its nanny, as ipyparallel starts them)."""

    def __init__(self, controller, n, args=()):
        self.procs = []
        self.logs = []
        for i in range(n):
            log_path = controller.profile_dir.parent / f"ipengine-{i}-{time.monotonic_ns()}.log"
            log = open(log_path, "w")
            cmd = [sys.executable, "-m", "ipyparallel.engine", f"--file={controller.file('engine')}"] + list(args)
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=engine_env()))
            self.logs.append((log, log_path))

    def output(self):
        out = []
        for log, path in self.logs:
            log.flush()
            out.append(f"--- {path}\n" + path.read_text(errors="replace"))
        return "\n".join(out)

    def stop(self):
        for p in self.procs:
            stop_process(p)
        for log, _ in self.logs:
            log.close()


@pytest.fixture
def ipython_dir(tmp_path, monkeypatch):
    d = tmp_path / "ipython"
    d.mkdir()
    monkeypatch.setenv("IPYTHONDIR", str(d))
    monkeypatch.delenv("IPP_PROFILE_DIR", raising=False)
    monkeypatch.delenv("IPP_CLUSTER_ID", raising=False)
    return d


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report carries the tail of each controller's and engine's log, so a
    failure in CI can be read without the machine it ran on."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed:
        return
    for proc in getattr(item, "_rpar_procs", []):
        try:
            text = proc.output()
        except Exception as e:  # a log that cannot be read must not hide the failure
            text = f"(log not readable: {e})"
        tail = "\n".join(text.splitlines()[-80:])
        rep.sections.append((f"log tail: {type(proc).__name__}", tail))


@pytest.fixture
def make_controller(ipython_dir, request):
    """Factory: make_controller(*args, kind='rpar', profile='default') -> Controller."""
    made = []
    request.node._rpar_procs = getattr(request.node, "_rpar_procs", [])

    def make(*args, kind="rpar", profile="default", cluster_id="", env=None, prefix=()):
        c = Controller(ipython_dir / f"profile_{profile}", args, kind=kind, cluster_id=cluster_id, env=env,
                       prefix=prefix)
        made.append(c)
        request.node._rpar_procs.append(c)
        return c

    yield make
    for c in made:
        c.stop()


@pytest.fixture
def make_engines(request):
    made = []
    request.node._rpar_procs = getattr(request.node, "_rpar_procs", [])

    def make(controller, n, args=()):
        e = Engines(controller, n, args)
        made.append(e)
        request.node._rpar_procs.append(e)
        return e

    yield make
    for e in made:
        e.stop()


def connect(controller, n, engines=None, timeout=60):
    """A Client on `controller` once `n` engines are registered."""
    c = controller.client()
    try:
        c.wait_for_engines(n, timeout=timeout)
    except Exception:
        detail = controller.output()
        if engines is not None:
            detail += "\n" + engines.output()
        c.close()
        raise AssertionError(f"{n} engines did not register:\n{detail}")
    return c


@pytest.fixture(scope="module")
def rpar_cluster(tmp_path_factory):
    """One rpar-controller with two real Python ipengines, shared by a test module."""
    import ipyparallel as ipp  # noqa: F401

    ipdir = tmp_path_factory.mktemp("ipython")
    old = os.environ.get("IPYTHONDIR")
    os.environ["IPYTHONDIR"] = str(ipdir)
    ctl = Controller(ipdir / "profile_default", ["--ping=500"])
    eng = Engines(ctl, 2)
    client = connect(ctl, 2, eng)
    try:
        yield ctl, eng, client
    finally:
        try:
            client.close()
        except Exception:
            pass
        eng.stop()
        ctl.stop()
        if old is None:
            os.environ.pop("IPYTHONDIR", None)
        else:
            os.environ["IPYTHONDIR"] = old


def read_json(p):
    return json.loads(Path(p).read_text())
