"""Installing rpar into a prefix (ci/install-prefix.sh, what ci/demo.sh runs to put the programs on
PATH), then using it from a new shell: nothing of the build tree or the test environment on
PATH, only the prefix, and the README's usage lines as they stand."""

import os
import re
import subprocess

from util_cluster import BIN, ROOT


def install(tmp_path):
    prefix = tmp_path / "opt" / "rpar" / "0.1"
    r = subprocess.run(["bash", str(ROOT / "ci" / "install-prefix.sh")], capture_output=True, text=True,
                       env=dict(os.environ, PREFIX=str(prefix), RPAR_INSTALL_FROM=str(BIN)), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{prefix}/bin", r.stdout
    assert f"prepend-path PATH {prefix}/bin" in r.stderr, r.stderr
    return prefix


def new_shell_env(tmp_path, prefix):
    """A login-like environment: the prefix and the system directories on PATH, a fresh HOME."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"PATH": f"{prefix}/bin:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}


def test_prefix_install_runs_without_the_build_tree(tmp_path):
    prefix = install(tmp_path)
    assert (prefix / "share" / "rpar" / "jobscripts" / "slurm.engine").is_file()
    env = new_shell_env(tmp_path, prefix)
    for prog in ("rpar", "rpar-controller", "rpar-engine"):
        r = subprocess.run(["bash", "-c", f"command -v {prog} && {prog} --version"], capture_output=True,
                           text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[0] == f"{prefix}/bin/{prog}"
        assert r.stdout.splitlines()[1].startswith(f"{prog} "), r.stdout
    r = subprocess.run(["bash", "-c", "rpar-engine --check"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    # no venv on PATH or in VIRTUAL_ENV: the engine takes the Python it was built with
    assert "chosen by no --python-venv or VIRTUAL_ENV, so the Python rpar-engine was built with" in r.stdout
    assert re.search(r"^ipyparallel \d+\.", r.stdout, re.M), r.stdout


def readme_usage():
    """The README's usage lines up to `rpar cluster stop` (the part that runs on one machine)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Using it", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = []
    for line in block.splitlines():
        if not line.strip():
            break
        lines.append(line)
    assert lines[-1].startswith("rpar cluster stop"), lines
    return lines


def test_readme_usage_works_in_a_new_shell(tmp_path):
    prefix = install(tmp_path)
    env = new_shell_env(tmp_path, prefix)
    # what the README says Open MPI needs on a machine with fewer cores than engines / as root
    env.update(OMPI_MCA_rmaps_base_oversubscribe="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    # the test machine has one network interface for MPI: loopback (as ci/env.sh says)
    for k in ("OMPI_MCA_btl", "OMPI_MCA_btl_tcp_if_include", "OMPI_MCA_oob_tcp_if_include"):
        if k in os.environ:
            env[k] = os.environ[k]
    venv = os.environ.get("RPAR_VENV", "/opt/rpar/venv")
    script = "set -e\n" + "\n".join(readme_usage()).replace("/opt/rpar/venv", venv) + "\n"
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=300)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        assert "[42, 42, 42, 42]" in r.stdout, r.stdout
    finally:
        subprocess.run([str(prefix / "bin" / "rpar"), "cluster", "stop", "--profile=mpi"], env=env,
                       capture_output=True, timeout=60)
