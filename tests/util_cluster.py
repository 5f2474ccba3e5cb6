"""Helpers for the `rpar cluster` tests: a private IPYTHONDIR per test, running the real `rpar`
binary, the real ipyparallel client, and the CI services (ci/services/*.sh)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import wait_for  # noqa: F401  (re-exported for the cluster tests)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("RPAR_BIN_DIR", ROOT / "target" / "debug"))
SERVICES = ROOT / "ci" / "services"


def rpar_path():
    p = BIN / "rpar"
    if not p.exists():
        pytest.fail(f"{p} is missing: run `cargo build --workspace` first")
    return str(p)


def require_service(name):
    """Skip (with the reason) unless ci/services/<name>.sh says the service is up."""
    script = SERVICES / f"{name}.sh"
    r = subprocess.run(["bash", str(script), "status"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        pytest.skip(f"{name} is not running: `ci/services/{name}.sh start` failed or was not run "
                    f"({(r.stderr or r.stdout).strip()[:200]})")




def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def session_members(sid):
    """Live pids whose session id is `sid` (what `rpar cluster stop` must leave empty)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            out.append(int(d))
    return out


class RparEnv:
    """A private IPYTHONDIR and helpers to run `rpar` in it."""

    def __init__(self, tmp_path, profile="default"):
        self.ipython_dir = Path(tmp_path) / "ipython"
        self.profile = profile
        self.env = dict(os.environ, IPYTHONDIR=str(self.ipython_dir))
        self.env.pop("IPP_PROFILE_DIR", None)
        self.env.pop("IPP_CLUSTER_ID", None)
        self.env.pop("IPP_CONNECTION_INFO", None)
        self.started = []

    @property
    def profile_dir(self):
        return self.ipython_dir / f"profile_{self.profile}"

    def rpar(self, *args, check=True, timeout=300):
        r = subprocess.run([rpar_path(), *args], capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"rpar {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def create_profile(self, config=None):
        self.rpar("profile", "create", "--parallel", f"--profile={self.profile}")
        if config:
            (self.profile_dir / "ipcluster_config.py").write_text(config)

    def start(self, *args, cluster_id=None, timeout=300):
        extra = [f"--cluster-id={cluster_id}"] if cluster_id is not None else []
        r = self.rpar("cluster", "start", f"--profile={self.profile}", "--daemonize", *extra, *args, timeout=timeout)
        self.started.append(cluster_id)
        return r

    def stop(self, cluster_id=None, check=True):
        extra = [f"--cluster-id={cluster_id}"] if cluster_id is not None else []
        return self.rpar("cluster", "stop", f"--profile={self.profile}", *extra, check=check)

    def cluster_file(self, cluster_id=""):
        return self.profile_dir / "security" / f"cluster-{cluster_id}.json"

    def cluster_data(self, cluster_id=""):
        return json.loads(self.cluster_file(cluster_id).read_text())

    def client(self, cluster_id="", n=None, timeout=60):
        import ipyparallel as ipp

        name = f"ipcontroller-{cluster_id}-client.json" if cluster_id else "ipcontroller-client.json"
        rc = ipp.Client(str(self.profile_dir / "security" / name))
        if n is not None:
            rc.wait_for_engines(n, timeout=timeout)
        return rc

    def cleanup(self):
        for cid in self.started:
            if self.cluster_file(cid or "").exists():
                self.stop(cid, check=False)


def handles(data):
    """Every launcher handle of a cluster file (controller first)."""
    hs = list(data["controller"]["handles"])
    for s in data["engines"]["sets"].values():
        hs.extend(s["handles"])
    return hs


@pytest.fixture
def rpar_env(tmp_path):
    e = RparEnv(tmp_path)
    yield e
    e.cleanup()


def remote(f):
    """Make a test-module function runnable on engines (which cannot import the test module)."""
    f.__module__ = "__main__"
    return f
