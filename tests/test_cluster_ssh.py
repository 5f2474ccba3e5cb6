"""`rpar cluster` with the ssh launcher: engines started over ssh on a "remote host" (a network
namespace made by ci/services/sshd.sh, reached over a veth) register with the controller across
the veth and run code; the connection file is copied with scp; stop leaves nothing behind."""

import subprocess

from util_cluster import RparEnv, handles, remote, require_service, wait_for

REMOTE = "10.200.0.2"
LOCAL = "10.200.0.1"
KEY = ["-i", "/etc/rpar-ci/ssh/id_ed25519", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
       "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]


def ns_pids():
    out = subprocess.run(["ip", "netns", "pids", "rparssh"], capture_output=True, text=True).stdout
    return set(out.split())


def test_ssh_engines_on_a_namespace_host(tmp_path):
    require_service("sshd")
    e = RparEnv(tmp_path, profile="ssh")
    remote_profile = tmp_path / "remote-profile"
    config = f"""c = get_config()
import os
c.IPClusterEngines.engine_launcher = \\
    'IPython.parallel.apps.launcher.SSHEngineSetLauncher'
c.SSHEngineSetLauncher.engines = {{ '{REMOTE}' : 2,
            'root@{REMOTE}' : (1, ['--timeout=20']) }}
c.SSHEngineSetLauncher.ssh_args = {KEY!r}
c.SSHEngineSetLauncher.scp_args = {KEY!r}
c.SSHEngineSetLauncher.user = os.environ.get('USER', 'root') if os.geteuid() else 'root'
c.SSHEngineSetLauncher.remote_profile_dir = '{remote_profile}'
c.BaseLauncher.environment = {{'OMPI_ALLOW_RUN_AS_ROOT': '1', 'OMPI_ALLOW_RUN_AS_ROOT_CONFIRM': '1'}}
"""
    before = ns_pids()
    try:
        e.create_profile(config)
        r = e.start("--ip=*", f"--location={LOCAL}")
        assert "3 engines registered" in r.stderr, r.stderr
        data = e.cluster_data()
        remotes = [h for h in handles(data) if h["kind"] == "remote"]
        assert [h["host"] for h in remotes] == [f"root@{REMOTE}", f"root@{REMOTE}"]
        # scp copied the engine connection file to the remote profile
        assert (remote_profile / "security" / "ipcontroller-engine.json").exists()
        rc = e.client(n=3)
        # the engines run in the namespace: their only non-loopback address is the remote one
        addrs = rc[:].apply_sync(remote(lambda: __import__("subprocess").run(
            ["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True).stdout))
        assert all(REMOTE in a and LOCAL not in a for a in addrs), addrs
        assert rc[:].apply_sync(remote(lambda: sum(range(101)))) == [5050] * 3
        prof = rc[:].apply_sync(remote(lambda: __import__("os").environ["IPP_PROFILE_DIR"]))
        assert set(prof) == {str(remote_profile)}
        rc.close()
        assert len(ns_pids() - before) >= 3
        e.stop()
        wait_for(lambda: ns_pids() - before == set(), timeout=30, what="the remote engines to exit")
    finally:
        e.cleanup()


def test_ssh_controller_on_a_namespace_host(tmp_path):
    """The seed's remote controller: SSHControllerLauncher with hostname/user; rpar fetches its
    connection files with scp; local engines and the client reach it across the veth."""
    require_service("sshd")
    e = RparEnv(tmp_path, profile="sshc")
    config = f"""c = get_config()
c.IPClusterStart.controller_launcher = \\
    'IPython.parallel.apps.launcher.SSHControllerLauncher'
c.SSHControllerLauncher.hostname = '{REMOTE}'
c.SSHControllerLauncher.user = 'root'
c.SSHControllerLauncher.ssh_args = {KEY!r}
c.SSHControllerLauncher.scp_args = {KEY!r}
c.SSHControllerLauncher.remote_profile_dir = '{tmp_path / "remote-ctl"}'
"""
    before = ns_pids()
    try:
        e.create_profile(config)
        e.start("--n=2", "--ip=*", f"--location={REMOTE}")
        info = __import__("json").loads((e.profile_dir / "security" / "ipcontroller-client.json").read_text())
        assert info["location"] == REMOTE
        (ctl,) = [h for h in handles(e.cluster_data()) if h["kind"] == "remote"]
        assert str(ctl["pid"]) in ns_pids() - before  # the controller runs in the namespace
        rc = e.client(n=2)
        assert rc[:].apply_sync(remote(lambda: 3 * 5)) == [15, 15]
        rc.close()
        e.stop()
        wait_for(lambda: ns_pids() - before == set(), timeout=30, what="the remote controller to exit")
    finally:
        e.cleanup()
