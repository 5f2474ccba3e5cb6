"""SSH tunnels for engines: a controller that listens for engines only on loopback INSIDE the
network namespace of ci/services/sshd.sh (so nothing here can reach it directly), with
`--enginessh=root@10.200.0.2` writing the `ssh` field of the engine connection file. Rank 0 of
`mpiexec -n 2 rpar-engine --sshkey=...` tunnels every connection through that sshd (native and
compat transport), the engines register and compute, the ssh process is rank 0's child and goes away with the job. A key the
server refuses fails the job before registering, with ssh's reason."""

import socket
import subprocess
from pathlib import Path

import pytest

from conftest import connect, read_json, wait_for
from util_cluster import require_service
from util_engine import EngineJob

NS = "rparssh"
REMOTE = "10.200.0.2"
KEY = "/etc/rpar-ci/ssh/id_ed25519"
# the namespace's host key is not in any known_hosts, and nothing in ~/.ssh is touched
SSH_CMD = ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
           "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes"]


def ssh_children(pid):
    """pids of `ssh ... -L ...` processes whose parent is `pid`."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and cmd and cmd[0] == b"ssh" and b"-L" in cmd:
            out.append(int(d.name))
    return out


def alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.fixture
def hidden_controller(make_controller):
    """rpar-controller in the sshd's namespace: engines' sockets on the namespace's loopback,
    clients' on its veth address (reachable from here)."""
    require_service("sshd")
    ctl = make_controller("--ping=500", "--IPController.engine_ip=127.0.0.1",
                          f"--IPController.client_ip={REMOTE}", f"--enginessh=root@{REMOTE}",
                          prefix=["ip", "netns", "exec", NS])
    info = read_json(ctl.file("engine"))
    assert info["ssh"] == f"root@{REMOTE}" and info["interface"] == "tcp://127.0.0.1", info
    # not reachable directly: this namespace's loopback has nothing on that port
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", info["registration"]), timeout=3).close()
    return ctl


@pytest.mark.parametrize("transport", ["native", "compat"])
def test_engines_register_and_run_through_an_ssh_tunnel(hidden_controller, transport):
    ctl = hidden_controller
    job = EngineJob("openmpi", 2, ctl.profile_dir,
                    args=[f"--sshkey={KEY}", f"--IPEngine.ssh_cmd={SSH_CMD!r}", f"--transport={transport}"])
    try:
        rc = connect(ctl, 2, job)
        try:
            assert rc[:].apply_sync(lambda x: x * 3, 14) == [42, 42]
            assert rc.load_balanced_view().map_sync(lambda x: x + 1, range(8)) == list(range(1, 9))
            ranks = rc[:].apply_sync(lambda: __import__("mpi4py.MPI").MPI.COMM_WORLD.Get_rank())
            assert ranks == [0, 1]
        finally:
            rc.close()
        rank0 = job.rank_pid(0)
        tunnels = ssh_children(rank0)
        assert len(tunnels) == 1, (tunnels, job.output())
        assert "ssh tunnel through root@10.200.0.2 up" in job.output(), job.output()
        native = "native transport: one connection for the job's" in job.output()
        assert native == (transport == "native"), job.output()
    finally:
        job.stop()
    wait_for(lambda: not any(alive(p) for p in tunnels), timeout=20, what="the ssh tunnel to end with the job")


def test_a_refused_key_fails_before_registering(hidden_controller, tmp_path):
    ctl = hidden_controller
    key = tmp_path / "not_authorized"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    job = EngineJob("openmpi", 2, ctl.profile_dir, args=[f"--sshkey={key}", f"--IPEngine.ssh_cmd={SSH_CMD!r}"])
    try:
        assert job.wait(60) != 0
        out = job.output()
        assert "ssh tunnel through root@10.200.0.2 failed" in out, out
        assert "Permission denied" in out and "BatchMode" in out, out
        assert "Completed registration" not in out
    finally:
        job.stop()
