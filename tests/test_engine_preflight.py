"""rpar-engine's pre-flight, `rpar-engine --check` and GPU binding per rank (`--gpus=auto`),
with real mpiexec, a real rpar-controller and the real ipyparallel client.

* an engine job whose Python lacks ipyparallel exits non-zero before registering, naming the
  interpreter and the fix;
* `--check` prints Python, venv, ipyparallel, MPI and thread level, mpi4py's MPI (a second MPI
  library is a warning) and every rank's GPU binding;
* 4 ranks on a node that pretends to have 2 GPUs (RPAR_ENGINE_GPUS=nvidia:2) see local rank r ->
  device r mod 2; a list of 4 the batch system set is split one each.
"""

import os
import subprocess
import sys

import pytest
from ipyparallel.error import RemoteError

from util_cluster import remote
from util_engine import EngineJob, engine_binary, mpich_abi_dir

N = 4


@pytest.fixture
def controller(make_controller):
    return make_controller("--ip=127.0.0.1", "--ping=500")


@pytest.fixture
def jobs():
    made = []

    def make(controller, n=N, args=(), env=None):
        j = EngineJob("openmpi", n, controller.profile_dir, args, env=env)
        made.append(j)
        return j

    yield make
    for j in made:
        j.stop()


@pytest.fixture
def bare_venv(tmp_path):
    """A virtual environment of the same Python without ipyparallel (nor anything else)."""
    d = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(d)], check=True)
    return d


def check(n, env=None, args=()):
    """`mpiexec -n N rpar-engine --check` -> (status, stdout + stderr)."""
    mpiexec, binary = engine_binary("openmpi")
    e = dict(os.environ, **(env or {}))
    r = subprocess.run([mpiexec, "-n", str(n), binary, "--check", *args], capture_output=True, text=True,
                       env=e, timeout=120)
    return r.returncode, r.stdout + r.stderr


def test_engine_without_ipyparallel_exits_before_registering(controller, jobs, bare_venv):
    job = jobs(controller, n=2, env={"VIRTUAL_ENV": str(bare_venv)})
    assert job.wait(120) != 0, job.output()
    out = job.output()
    line = next((l for l in out.splitlines() if "cannot import ipyparallel" in l), None)
    assert line is not None, out
    # the interpreter (executable, version, prefix), where it came from, what is missing, the fix
    assert f"{bare_venv}/bin/python" in line and f"prefix {bare_venv}" in line, line
    assert f"Python {sys.version.split()[0]}" in line, line
    assert f"chosen by VIRTUAL_ENV={bare_venv}" in line, line
    assert "No module named 'ipyparallel'" in line, line
    assert "--python-venv=DIR" in line and "-m pip install ipyparallel" in line, line
    # one line for the job, not one per rank, and nothing registered
    assert sum("cannot import ipyparallel" in l for l in out.splitlines()) == 1, out
    rc = controller.client()
    try:
        # the hub itself answers: no engine registered
        with pytest.raises(RemoteError, match="No Engines Registered"):
            rc.queue_status()
        assert rc.ids == []
    finally:
        rc.close()


def test_a_later_rank_without_ipyparallel_stops_the_whole_job(controller, bare_venv):
    """Rank 1 of 2 runs in the bare venv (an MPMD job with its own VIRTUAL_ENV): the job exits
    non-zero before registering, with rank 1's line."""
    mpiexec, binary = engine_binary("openmpi")
    marker = f"--profile-dir={controller.profile_dir}"
    r = subprocess.run([mpiexec, "-n", "1", binary, marker, ":", "-n", "1", "-x", f"VIRTUAL_ENV={bare_venv}",
                        binary, marker], capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert f"rank 1: the Python rpar-engine embeds ({bare_venv}/bin/python" in out, out
    assert "cannot import ipyparallel.serialize" in out, out
    rc = controller.client()
    try:
        with pytest.raises(RemoteError, match="No Engines Registered"):
            rc.queue_status()
    finally:
        rc.close()


def test_check_prints_the_environment():
    rc, out = check(2, env={"RPAR_ENGINE_GPUS": "nvidia:2"}, args=["--gpus=auto"])
    assert rc == 0, out
    import ipyparallel
    import mpi4py

    assert f"Python {sys.version.split()[0]} at " in out, out
    assert f"ipyparallel {ipyparallel.__version__} (" in out, out
    assert "thread level granted: Multiple" in out and "2 rank(s)" in out, out
    assert "Open MPI" in out and "libmpi.so" in out, out
    assert f"mpi4py {mpi4py.__version__}: MPI Open MPI" in out, out
    assert "the same MPI library the engine runs on" in out, out
    assert "rank 0 (local 0 of 2): ipyparallel ok; GPUs bound: CUDA_VISIBLE_DEVICES=0" in out, out
    assert "rank 1 (local 1 of 2): ipyparallel ok; GPUs bound: CUDA_VISIBLE_DEVICES=1" in out, out
    assert "2 nvidia device(s) from RPAR_ENGINE_GPUS" in out, out


def test_check_names_a_python_without_ipyparallel(bare_venv):
    rc, out = check(1, env={"VIRTUAL_ENV": str(bare_venv)})
    assert rc == 1, out
    assert "ERROR: rank 0: the Python rpar-engine embeds" in out and f"{bare_venv}/bin/python" in out, out
    assert f"ipyparallel MISSING (rank 0: the Python rpar-engine embeds ({bare_venv}/bin/python" in out, out


def test_check_warns_when_mpi4py_loads_another_mpi(tmp_path):
    """mpi4py told to take the MPICH ABI (MPI4PY_MPIABI) in an Open MPI engine: a second MPI
    library in the process, named as a warning."""
    _, mpich_binary = engine_binary("mpich")
    abi = mpich_abi_dir(mpich_binary, tmp_path)
    env = {"MPI4PY_MPIABI": "mpich"}
    if abi is not None:
        env["LD_LIBRARY_PATH"] = str(abi) + (os.pathsep + os.environ["LD_LIBRARY_PATH"]
                                             if os.environ.get("LD_LIBRARY_PATH") else "")
    rc, out = check(1, env=env)
    assert rc == 0, out
    assert "loads another MPI library than the engine runs on" in out and "libmpich.so.12" in out, out
    assert "WARNING: mpi4py" in out, out


def getenv_everywhere(rc, name):
    """os.environ.get(name) on every engine (a bound os.environ.get does not pickle)."""
    return rc[:].apply_sync(remote(lambda name: __import__("os").environ.get(name)), name)


def test_four_ranks_share_two_pretend_gpus(controller, jobs):
    job = jobs(controller, args=["--gpus=auto"], env={"RPAR_ENGINE_GPUS": "nvidia:2"})
    rc = controller.client()
    try:
        rc.wait_for_engines(N, timeout=120)
        ranks = getenv_everywhere(rc, "OMPI_COMM_WORLD_LOCAL_RANK")
        assert ranks == ["0", "1", "2", "3"], ranks
        assert getenv_everywhere(rc, "CUDA_VISIBLE_DEVICES") == ["0", "1", "0", "1"]
    finally:
        rc.close()
    assert "GPU binding: CUDA_VISIBLE_DEVICES=1 (local rank 3 of 4 on this node; 2 nvidia device(s) " \
           "from RPAR_ENGINE_GPUS)" in job.output(), job.output()


def test_a_preset_list_is_split_one_each_by_the_config_trait(controller, jobs):
    """CUDA_VISIBLE_DEVICES=4,5,6,7 set before the job (as Slurm --gpus-per-task does) and
    c.IPEngine.gpus = 'auto' in ipengine_config.py: each of the 4 ranks gets one of the list."""
    (controller.profile_dir / "ipengine_config.py").write_text("c = get_config()\nc.IPEngine.gpus = 'auto'\n")
    job = jobs(controller, env={"CUDA_VISIBLE_DEVICES": "4,5,6,7"})
    rc = controller.client()
    try:
        rc.wait_for_engines(N, timeout=120)
        assert getenv_everywhere(rc, "CUDA_VISIBLE_DEVICES") == ["4", "5", "6", "7"]
    finally:
        rc.close()
    assert "the CUDA_VISIBLE_DEVICES list already set" in job.output(), job.output()


def test_bad_gpu_settings_are_named(controller, jobs):
    job = jobs(controller, n=1, args=["--gpus=all"])
    assert job.wait(60) != 0
    assert "--gpus=\"all\": expected 'auto'" in job.output(), job.output()
    job = jobs(controller, n=1, args=["--gpus=auto"], env={"RPAR_ENGINE_GPUS": "two"})
    assert job.wait(60) != 0
    assert "RPAR_ENGINE_GPUS=\"two\": expected VENDOR:COUNT" in job.output(), job.output()
