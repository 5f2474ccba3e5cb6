"""`rpar cluster` on this host: rpar-controller + rpar-engine (one MPI job), end to end with the
real ipyparallel client; profiles; errors; stop leaves nothing behind."""

import json
import os
import signal
import subprocess
import time

import pytest

from util_cluster import RparEnv, handles, pid_alive, remote, rpar_env, rpar_path, session_members, wait_for  # noqa: F401


def test_profile_create_list_locate(rpar_env):
    rpar_env.profile = "myprofile"
    r = rpar_env.rpar("profile", "create", "--parallel", "--profile=myprofile")
    pd = rpar_env.profile_dir
    assert r.stdout.strip() == str(pd)
    for sub in ["security", "log", "pid", "startup"]:
        assert (pd / sub).is_dir()
    assert oct((pd / "security").stat().st_mode & 0o777) == "0o700"
    text = (pd / "ipcontroller_config.py").read_text()
    assert "# c.IPController.ip = '127.0.0.1'" in text and "c = get_config()" in text
    assert "# c.SSHEngineSetLauncher.engines = {}" in (pd / "ipcluster_config.py").read_text()
    assert "# c.IPEngine.startup_script = ''" in (pd / "ipengine_config.py").read_text()
    assert "myprofile" in rpar_env.rpar("profile", "list").stdout.split()
    assert rpar_env.rpar("profile", "locate", "myprofile").stdout.strip() == str(pd)
    # an edited file survives a second create
    (pd / "ipcluster_config.py").write_text("c.Cluster.n = 3\n")
    rpar_env.rpar("profile", "create", "--parallel", "--profile=myprofile")
    assert (pd / "ipcluster_config.py").read_text() == "c.Cluster.n = 3\n"


def test_start_compute_stop(rpar_env):
    rpar_env.create_profile()
    r = rpar_env.start("--n=4")
    assert "4 engines registered" in r.stderr
    data = rpar_env.cluster_data()
    assert data["cluster"]["n"] == 4 and data["engines"]["class"] == "local"
    rc = rpar_env.client(n=4)
    # one MPI job: every engine is a rank of the same COMM_WORLD of size 4
    ranks = rc[:].apply_sync(remote(lambda: __import__("mpi4py.MPI", fromlist=["MPI"]).COMM_WORLD.Get_rank()))
    sizes = rc[:].apply_sync(remote(lambda: __import__("mpi4py.MPI", fromlist=["MPI"]).COMM_WORLD.Get_size()))
    assert sorted(ranks) == [0, 1, 2, 3] and set(sizes) == {4}
    assert sum(rc[:].map_sync(remote(lambda x: x * x), range(10))) == 285
    rc.close()
    listing = rpar_env.rpar("cluster", "list", "--profile=default").stdout
    assert "True" in listing and " 4 " in listing
    hs = handles(data)
    pids = [h["pid"] for h in hs if h["kind"] == "process"]
    assert len(pids) == 2  # controller, mpiexec
    t0 = time.monotonic()
    rpar_env.stop()
    assert time.monotonic() - t0 < 30
    for pid in pids:
        assert not pid_alive(pid)
        assert session_members(pid) == [], "processes of the cluster survived stop"
    assert not rpar_env.cluster_file().exists()
    assert not (rpar_env.profile_dir / "security" / "ipcontroller-client.json").exists()
    r = rpar_env.stop(check=False)
    assert r.returncode == 11 and "no cluster to stop" in r.stderr


def test_seed_mpiexec_profile_and_cluster_id(tmp_path):
    """The seed's mpiexec mode: profile `mpi`, MPIExecEngineSetLauncher, `start --n=4 --profile=mpi`."""
    e = RparEnv(tmp_path, profile="mpi")
    try:
        e.create_profile(
            "c = get_config()\n"
            "c.IPClusterEngines.engine_launcher = 'IPython.parallel.apps.launcher.MPIExecEngineSetLauncher'\n"
        )
        e.start("--n=4", cluster_id="seed")
        data = e.cluster_data("seed")
        assert data["engines"]["class"] == "mpi"
        argv = [h["argv"] for h in handles(data) if h["kind"] == "process"]
        assert any(a[0].endswith("mpiexec") and a[1:3] == ["-n", "4"] for a in argv), argv
        rc = e.client("seed", n=4)
        env = rc[:].apply_sync(remote(lambda: (__import__("os").environ["IPP_CLUSTER_ID"], __import__("os").environ["IPP_PROFILE_DIR"])))
        assert set(env) == {("seed", str(e.profile_dir))}
        rc.close()
        assert (e.profile_dir / "security" / "ipcontroller-seed-client.json").exists()
        r = e.rpar("cluster", "start", "--profile=mpi", "--cluster-id=seed", "--n=1", "--daemonize", check=False)
        assert r.returncode == 10 and "already running" in r.stderr
    finally:
        e.cleanup()


def test_engines_adds_to_a_running_cluster(rpar_env):
    rpar_env.create_profile()
    rpar_env.start("--n=2")
    rpar_env.rpar("cluster", "engines", "--profile=default", "--n=2", "--daemonize")
    rc = rpar_env.client(n=4)
    assert len(set(rc[:].apply_sync(os.getpid))) == 4
    rc.close()
    data = rpar_env.cluster_data()
    assert len(data["engines"]["sets"]) == 2
    pids = [h["pid"] for h in handles(data) if h["kind"] == "process"]
    rpar_env.stop()
    assert not any(pid_alive(p) or session_members(p) for p in pids)


def test_foreground_cluster_stops_on_sigterm_and_from_another_shell(rpar_env):
    rpar_env.create_profile()
    for how in ["signal", "stop"]:
        p = subprocess.Popen([rpar_path(), "cluster", "start", "--profile=default", "--n=2"],
                             env=rpar_env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: rpar_env.cluster_file().exists() and len(handles(rpar_env.cluster_data())) >= 2,
                     timeout=60, what="cluster file")
            rc = rpar_env.client(n=2)
            assert rc[:].apply_sync(remote(lambda: 6 * 7)) == [42, 42]
            rc.close()
            pids = [h["pid"] for h in handles(rpar_env.cluster_data()) if h["kind"] == "process"]
            if how == "signal":
                p.send_signal(signal.SIGTERM)
            else:
                rpar_env.stop()
            assert p.wait(60) == 0, p.stderr.read()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert not rpar_env.cluster_file().exists()
        assert not any(pid_alive(x) or session_members(x) for x in pids), how


def test_missing_engines_fail_with_logs_and_cleanup(rpar_env):
    rpar_env.create_profile(
        "c = get_config()\n"
        "c.EngineLauncher.engine_cmd = ['/bin/sh', '-c', 'echo engine cannot start >&2; exit 3']\n"
    )
    r = rpar_env.rpar("cluster", "start", "--profile=default", "--n=2", "--daemonize", check=False)
    assert r.returncode == 1
    assert "engines exited: 0 of 2 registered" in r.stderr, r.stderr
    assert "engine cannot start" in r.stderr  # the tail of the engine log
    assert str(rpar_env.profile_dir / "log") in r.stderr
    assert not rpar_env.cluster_file().exists()
    assert not (rpar_env.profile_dir / "security" / "ipcontroller-client.json").exists()


def test_engine_timeout_names_what_is_missing(rpar_env):
    rpar_env.create_profile("c = get_config()\nc.EngineLauncher.engine_cmd = ['/bin/sh', '-c', 'exec sleep 600', 'engine']\nc.MPILauncher.mpi_cmd = ['no-such-mpiexec']\n")
    r = rpar_env.rpar("cluster", "start", "--profile=default", "--n=2", "--daemonize", "--engine-timeout=3", check=False)
    assert r.returncode == 1
    assert "only 0 of 2 engines registered after 3 s" in r.stderr, r.stderr
    assert "ipengine-default-" in r.stderr  # where the engine logs are
    assert not rpar_env.cluster_file().exists()


def test_config_errors_name_the_line(rpar_env):
    rpar_env.create_profile("c = get_config()\nc.IPClusterEngines.n = 2\nc.IPClusterEngines.engine_launcher = 'nosuch'\n")
    r = rpar_env.rpar("cluster", "start", "--profile=default", "--daemonize", check=False)
    assert r.returncode == 1
    assert "ipcluster_config.py:3" in r.stderr and "unknown launcher" in r.stderr, r.stderr
    (rpar_env.profile_dir / "ipcluster_config.py").write_text("c = get_config()\nc.IPClusterEngines.nn = 2\n")
    r = rpar_env.rpar("cluster", "start", "--profile=default", "--daemonize", check=False)
    assert "ipcluster_config.py:2" in r.stderr and "did you mean IPClusterEngines.n?" in r.stderr, r.stderr


def test_list_json_and_clean(rpar_env):
    rpar_env.create_profile()
    rpar_env.start("--n=1", cluster_id="a")
    out = json.loads(rpar_env.rpar("cluster", "list", "--profile=default", "-o", "json").stdout)
    assert [(c["cluster_id"], c["running"], c["engines"]) for c in out] == [("a", True, 1)]
    r = rpar_env.rpar("cluster", "clean", "--profile=default", check=False)
    assert r.returncode == 1 and "still running" in r.stderr
    rpar_env.stop("a")
    assert list((rpar_env.profile_dir / "log").iterdir())
    rpar_env.rpar("cluster", "clean", "--profile=default")
    assert list((rpar_env.profile_dir / "log").iterdir()) == []


def test_jobscript_dry_run(rpar_env):
    rpar_env.create_profile()
    out = rpar_env.rpar("jobscript", "--batch=pbs", "--n=128", "--queue=short", "--profile=default").stdout
    lines = out.splitlines()
    assert "#PBS -l nodes=1:ppn=128" in lines and "#PBS -q short" in lines and "#PBS -V" in lines
    assert f"IPP_PROFILE_DIR={rpar_env.profile_dir}" in lines
    assert not list((rpar_env.profile_dir / "log").glob("*.pbs"))  # nothing written, nothing submitted
    out = rpar_env.rpar("jobscript", "--batch=slurm", "--role=cluster", "--n=4", "--profile=default").stdout
    assert "#SBATCH --ntasks=4" in out.splitlines() and "rpar-controller" in out
    out = rpar_env.rpar("jobscript", "--batch=sge", "--role=controller", "--profile=default").stdout
    assert "#$ -N rpar-controller" in out and "-pe" not in out
    # a user template in ipyparallel syntax from ipcluster_config.py
    (rpar_env.profile_dir / "ipcluster_config.py").write_text(
        "c = get_config()\nc.SlurmEngineSetLauncher.batch_template = '#SBATCH -N {n//4}\\nsrun {program_and_args}\\n'\n")
    out = rpar_env.rpar("jobscript", "--batch=slurm", "--n=16", "--profile=default").stdout
    assert out.startswith("#SBATCH -N 4\nsrun ") and "rpar-engine" in out
