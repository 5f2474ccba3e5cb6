"""`rpar cluster` with real batch systems: Slurm, SGE (qsub + parallel environment) and PBS
(Slurm's `qsub` front end from slurm-wlm-torque). Each submits a real job whose engines register,
the Python client runs code on all of them, and `rpar cluster stop` cancels the job."""

import subprocess

import pytest

from util_cluster import RparEnv, handles, remote, require_service, wait_for

TORQUE_QSUB = "/opt/rpar/torque/bin/qsub"


def squeue_ids():
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def sge_ids():
    out = subprocess.run(["qstat", "-u", "*"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines()[2:] if line.strip()}


def job_handles(e):
    """The batch-job handles of the cluster file."""
    return [h for h in handles(e.cluster_data()) if h["kind"] == "job"]


def engine_env(rc, name):
    """Environment variable `name` on every engine (None where unset)."""
    return rc[:].apply_sync(remote(lambda name: __import__("os").environ.get(name)), name)


def wait_dequeued(job_ids, queue_ids, what):
    """Wait until none of `job_ids` is in the batch queue any more."""
    wait_for(lambda: not (set(job_ids) & queue_ids()), timeout=60, what=what)


def run_batch_cluster(tmp_path, engines, config, job_env, queue_ids, extra=()):
    e = RparEnv(tmp_path, profile=engines)
    try:
        e.create_profile(config)
        r = e.start("--n=4", f"--engines={engines}", *extra, "--Cluster.engine_timeout=150")
        assert f"started {engines} job" in r.stderr or f"submitted {engines} job" in r.stderr, r.stderr
        jobs = job_handles(e)
        assert len(jobs) == 1 and jobs[0]["system"] == engines
        job_id = jobs[0]["job_id"]
        assert job_id in queue_ids()
        script = open(jobs[0]["script"]).read()
        rc = e.client(n=4)
        env = engine_env(rc, job_env)
        assert env == [job_id] * 4, (env, job_id)
        assert sorted(rc[:].apply_sync(remote(lambda: __import__("mpi4py.MPI", fromlist=["x"]).COMM_WORLD.Get_rank()))) == [0, 1, 2, 3]
        assert rc[:].apply_sync(remote(lambda x: x ** 2), 12) == [144] * 4
        rc.close()
        e.stop()
        wait_dequeued([job_id], queue_ids, f"job {job_id} to leave the queue")
        assert not e.cluster_file().exists()
        return script
    finally:
        e.cleanup()


def test_slurm(tmp_path):
    require_service("slurm")
    script = run_batch_cluster(tmp_path, "slurm", None, "SLURM_JOB_ID", squeue_ids)
    assert "#SBATCH --ntasks=4" in script and "#SBATCH --export=ALL" in script


def test_slurm_co_start_runs_controller_and_engines_in_one_job(tmp_path):
    require_service("slurm")
    e = RparEnv(tmp_path, profile="co")
    try:
        e.create_profile()
        e.start("--n=3", "--engines=slurm", "--co-start", "--Cluster.engine_timeout=150")
        (job,) = job_handles(e)
        rc = e.client(n=3)
        assert engine_env(rc, "SLURM_JOB_ID") == [job["job_id"]] * 3
        rc.close()
        # the controller runs inside the job: the job's processes include rpar-controller
        out = subprocess.run(["scontrol", "listpids", job["job_id"]], capture_output=True, text=True).stdout
        cmds = []
        for line in out.splitlines()[1:]:
            pid = line.split()[0]
            try:
                cmds.append(open(f"/proc/{pid}/cmdline").read().replace("\0", " "))
            except OSError:
                pass
        assert any("rpar-controller" in c for c in cmds), cmds
        e.stop()
        wait_dequeued([job["job_id"]], squeue_ids, "the job to leave the queue")
    finally:
        e.cleanup()


def test_sge_with_parallel_environment(tmp_path):
    require_service("sge")
    script = run_batch_cluster(tmp_path, "sge", None, "JOB_ID", sge_ids)
    assert "#$ -pe smp 4" in script and "#$ -V" in script


def test_pbs_through_torque_qsub(tmp_path):
    require_service("slurm")
    config = f"c = get_config()\nc.PBSLauncher.submit_command = ['{TORQUE_QSUB}']\nc.PBSLauncher.queue = 'debug'\n"
    script = run_batch_cluster(tmp_path, "pbs", config, "SLURM_JOB_ID", squeue_ids)
    assert "#PBS -l nodes=1:ppn=4" in script and "#PBS -q debug" in script and "#PBS -V" in script


def test_seed_pbs_template_file_in_ipyparallel_syntax(tmp_path):
    """The seed's own PBS template ({n}, {queue}, {profile_dir}) through batch_template_file."""
    require_service("slurm")
    e = RparEnv(tmp_path, profile="pbs")
    e.create_profile()
    import shutil
    rpar_engine = shutil.which("rpar-engine") or str(__import__("util_cluster").BIN / "rpar-engine")
    (e.profile_dir / "pbs.engine.template").write_text(
        "#!/bin/sh\n#PBS -N ipython\n#PBS -j oe\n#PBS -V\n#PBS -l nodes=1:ppn={n}\n#PBS -q {queue}\n\n"
        "cd $PBS_O_WORKDIR\n"
        f"mpiexec -n {{n}} {rpar_engine} --profile_dir={{profile_dir}}\n"
    )
    (e.profile_dir / "ipcluster_config.py").write_text(
        "c = get_config()\n"
        "c.IPClusterEngines.engine_launcher = \\\n    'IPython.parallel.apps.launcher.PBSEngineSetLauncher'\n"
        "c.PBSEngineSetLauncher.batch_template_file = 'pbs.engine.template'\n"
        f"c.PBSLauncher.submit_command = ['{TORQUE_QSUB}']\n"
        "c.PBSLauncher.queue = 'debug'\n"
        "c.IPClusterEngines.n = 2\n"
    )
    try:
        e.start("--Cluster.engine_timeout=150")
        (job,) = job_handles(e)
        text = open(job["script"]).read()
        assert "#PBS -l nodes=1:ppn=2\n#PBS -q debug\n" in text
        assert f"--profile_dir={e.profile_dir}\n" in text
        rc = e.client(n=2)
        assert rc[:].apply_sync(remote(lambda: 1 + 1)) == [2, 2]
        rc.close()
        e.stop()
        wait_dequeued([job["job_id"]], squeue_ids, "the job to leave the queue")
    finally:
        e.cleanup()


def test_seed_pbs_mode_controller_and_engines_as_jobs(tmp_path):
    """The seed's PBS mode: controller AND engines as PBS jobs (here through Slurm's qsub)."""
    require_service("slurm")
    e = RparEnv(tmp_path, profile="pbs")
    config = f"""c = get_config()
c.IPClusterStart.controller_launcher = \\
    'IPython.parallel.apps.launcher.PBSControllerLauncher'
c.IPClusterEngines.engine_launcher = \\
    'IPython.parallel.apps.launcher.PBSEngineSetLauncher'
c.PBSLauncher.queue = 'debug'
c.IPClusterEngines.n = 3
c.PBSLauncher.submit_command = ['{TORQUE_QSUB}']
"""
    try:
        e.create_profile(config)
        e.start("--Cluster.engine_timeout=150")
        jobs = job_handles(e)
        assert [j["system"] for j in jobs] == ["pbs", "pbs"]
        ids = {j["job_id"] for j in jobs}
        assert ids <= squeue_ids()
        rc = e.client(n=3)
        assert len(set(engine_env(rc, "SLURM_JOB_ID"))) == 1
        rc.close()
        e.stop()
        wait_dequeued(ids, squeue_ids, "both jobs to leave the queue")
    finally:
        e.cleanup()


HAND_JOB_VAR = {"slurm": "SLURM_JOB_ID", "pbs": "SLURM_JOB_ID", "sge": "JOB_ID"}


def submit_by_hand(system, env, cwd, n):
    """Submit jobscripts/<system>.engine as a user would (qsub for PBS goes through Slurm's
    torque front end); the job id."""
    from util_cluster import ROOT

    script = str(ROOT / "jobscripts" / f"{system}.engine")
    submit = {
        "slurm": ["sbatch", f"--ntasks={n}", script],
        "pbs": [TORQUE_QSUB, "-l", f"nodes=1:ppn={n}", script],
        "sge": ["qsub", "-pe", "smp", str(n), script],
    }[system]
    out = subprocess.run(submit, env=env, cwd=cwd, capture_output=True, text=True, check=True).stdout
    return __import__("re").search(r"\d+", out).group(0)


def cancel_by_hand(system, job_ids):
    """Cancel hand-submitted jobs and wait until they have left the queue."""
    cancel = {"slurm": ["scancel"], "pbs": ["scancel"], "sge": ["qdel"]}[system]
    subprocess.run(cancel + list(job_ids), capture_output=True)
    ids_now = sge_ids if system == "sge" else squeue_ids
    wait_dequeued(job_ids, ids_now, "the hand-submitted jobs to end")


@pytest.mark.parametrize("system", ["slurm", "pbs", "sge"])
def test_jobscripts_submitted_by_hand(tmp_path, system):
    """`sbatch --ntasks=2 jobscripts/slurm.engine` (and qsub for PBS and SGE) as the files stand:
    the engines join a running cluster, sized by the submit command line."""
    require_service("sge" if system == "sge" else "slurm")
    from util_cluster import BIN

    e = RparEnv(tmp_path, profile="hand")
    try:
        e.create_profile()
        e.start("--n=1")
        env = dict(e.env, IPP_PROFILE_DIR=str(e.profile_dir), RPAR_ENGINE=str(BIN / "rpar-engine"))
        job_id = submit_by_hand(system, env, tmp_path, 2)
        try:
            rc = e.client(n=3, timeout=120)
            ids = engine_env(rc, HAND_JOB_VAR[system])
            assert sorted(ids, key=str).count(job_id) == 2, (ids, job_id)
            rc.close()
        finally:
            cancel_by_hand(system, [job_id])
    finally:
        e.cleanup()


@pytest.mark.parametrize("system", ["slurm", "pbs", "sge"])
def test_jobscripts_by_hand_find_the_profile_through_ipythondir(tmp_path, system):
    """With IPYTHONDIR exported and no IPP_PROFILE_DIR (profiles on scratch, as HPC sites keep
    them), a hand-submitted engine job finds its profile as every IPython program does:
    $IPYTHONDIR/profile_default, and $IPYTHONDIR/profile_<IPP_PROFILE> for a named profile. Both
    jobs join their running controllers and run a task."""
    require_service("sge" if system == "sge" else "slurm")
    from conftest import Controller
    from util_cluster import BIN

    ipdir = tmp_path / "scratch" / "ipython"
    ipdir.mkdir(parents=True)
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("IPP_PROFILE_DIR", "IPP_PROFILE", "IPP_CLUSTER_ID", "IPP_CONNECTION_INFO")}
    env.update(IPYTHONDIR=str(ipdir), RPAR_ENGINE=str(BIN / "rpar-engine"))
    ctls, jobs = [], []
    try:
        for profile in ("default", "scratchprof"):
            ctls.append(Controller(ipdir / f"profile_{profile}", env={"IPYTHONDIR": str(ipdir)}))
        jobs.append(submit_by_hand(system, env, tmp_path, 1))
        jobs.append(submit_by_hand(system, dict(env, IPP_PROFILE="scratchprof"), tmp_path, 1))
        try:
            for ctl, job_id in zip(ctls, jobs):
                rc = ctl.client()
                try:
                    rc.wait_for_engines(1, timeout=120)
                    assert engine_env(rc, HAND_JOB_VAR[system]) == [job_id], ctl.profile_dir
                    assert rc[:].apply_sync(remote(lambda x: x * 3), 14) == [42]
                finally:
                    rc.close()
        finally:
            cancel_by_hand(system, jobs)
    finally:
        for c in ctls:
            c.stop()


def test_broken_engine_environment_fails_before_submitting(tmp_path):
    """`rpar cluster start --engines=slurm` whose engines' Python lacks ipyparallel (VIRTUAL_ENV
    names a bare venv): rpar runs `rpar-engine --check` first and fails in seconds, saying which
    Python and why; no job reaches the queue and no controller is left."""
    require_service("slurm")
    import sys

    venv = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    e = RparEnv(tmp_path, profile="broken")
    try:
        e.create_profile()
        e.env["VIRTUAL_ENV"] = str(venv)
        r = e.rpar("cluster", "start", "--profile=broken", "--daemonize", "--n=2", "--engines=slurm", check=False)
        assert r.returncode != 0, r.stderr
        assert "no batch job was submitted" in r.stderr, r.stderr
        assert f"{venv}/bin/python" in r.stderr and "cannot import ipyparallel" in r.stderr, r.stderr
        out = subprocess.run(["squeue", "-h", "-o", "%i %o"], capture_output=True, text=True, check=True).stdout
        assert str(tmp_path) not in out, out
        assert not e.cluster_file().exists()
        assert not (e.profile_dir / "security" / "ipcontroller-engine.json").exists()
    finally:
        e.cleanup()
