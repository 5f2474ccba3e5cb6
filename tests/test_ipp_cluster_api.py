"""rpar behind ipyparallel's OWN cluster tools: `ipyparallel.Cluster` and the `ipcluster` command
start rpar-controller and `mpiexec -n 4 rpar-engine` when their commands are configured, as the
reference says (`ControllerLauncher.controller_cmd`, `EngineLauncher.engine_cmd`)."""

import os
import subprocess
import sys

import ipyparallel as ipp

import pytest

from conftest import engine_env, rpar_bin, wait_for


@pytest.fixture(autouse=True)
def engines_import_tests(monkeypatch):
    # functions defined here are pickled by reference: engines must import this module
    monkeypatch.setenv("PYTHONPATH", engine_env()["PYTHONPATH"])


def test_cluster_api_starts_rpar(ipython_dir):
    c = ipp.Cluster(n=4, engines="mpi", controller="local", profile_dir=str(ipython_dir / "profile_api"),
                    controller_args=["--ping=500"])
    c.config.ControllerLauncher.controller_cmd = [rpar_bin("rpar-controller")]
    c.config.EngineLauncher.engine_cmd = [rpar_bin("rpar-engine")]
    rc = c.start_and_connect_sync(activate=False)
    try:
        assert rc.ids == [0, 1, 2, 3]
        rc[:].execute("from mpi4py import MPI; r = MPI.COMM_WORLD.allreduce(MPI.COMM_WORLD.rank)", block=True)
        assert rc[:].pull("r", block=True) == [6, 6, 6, 6]
        assert rc.load_balanced_view().map_sync(lambda x: x + 1, range(8)) == list(range(1, 9))
    finally:
        rc.close()
        c.stop_cluster_sync()
    assert not (ipython_dir / "profile_api" / "security" / f"ipcontroller-{c.cluster_id}-client.json").exists()


def test_ipcluster_command_with_rpar_programs(ipython_dir):
    prof = ipython_dir / "profile_ipc"
    prof.mkdir()
    (prof / "ipcluster_config.py").write_text(
        f"c.Cluster.engine_launcher_class = 'mpi'\n"
        f"c.ControllerLauncher.controller_cmd = [{rpar_bin('rpar-controller')!r}]\n"
        f"c.EngineLauncher.engine_cmd = [{rpar_bin('rpar-engine')!r}]\n"
    )
    ipcluster = [sys.executable, "-m", "ipyparallel.cluster"]
    r = subprocess.run(ipcluster + ["start", "--n=4", f"--profile-dir={prof}", "--daemonize"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        rc = ipp.Client(profile_dir=str(prof), timeout=30)
        try:
            rc.wait_for_engines(4, timeout=60)
            assert len(set(rc[:].apply_sync(lambda: __import__("os").getpid()))) == 4
            assert rc[:].apply_sync(lambda: 5) == [5, 5, 5, 5]
        finally:
            rc.close()
    finally:
        r = subprocess.run(ipcluster + ["stop", f"--profile-dir={prof}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: not (prof / "security" / "ipcontroller-client.json").exists(), timeout=30,
             what="the controller's files removed after ipcluster stop")
