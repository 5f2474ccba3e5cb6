"""`rpar cluster start` resolves the controller's and the engines' launchers before it starts
anything: a bad Slurm template file or job-id regexp fails first, naming the setting, and no
controller process is started (none is left to tear down)."""

import pytest

from util_cluster import BIN, rpar_env  # noqa: F401


@pytest.mark.parametrize(
    "setting, value",
    [
        ("batch_template_file", "'/no/such/dir/slurm.template'"),
        ("job_id_regexp", "'Submitted batch job (\\\\d+'"),
    ],
)
def test_bad_slurm_launcher_setting_fails_before_the_controller_starts(rpar_env, tmp_path, setting, value):
    # the real controller, behind a wrapper that leaves a mark when it is started
    marker = tmp_path / "controller-started"
    wrapper = tmp_path / "controller.sh"
    wrapper.write_text(f"#!/bin/sh\necho started >> {marker}\nexec {BIN / 'rpar-controller'} \"$@\"\n")
    wrapper.chmod(0o755)
    rpar_env.create_profile(
        "c = get_config()\n"
        f"c.ControllerLauncher.controller_cmd = ['{wrapper}']\n"
        f"c.SlurmEngineSetLauncher.{setting} = {value}\n"
    )
    r = rpar_env.rpar("cluster", "start", "--profile=default", "--n=2", "--engines=slurm", "--daemonize", check=False)
    assert r.returncode == 1, r.stderr
    assert not marker.exists(), f"a controller was started:\n{r.stderr}"
    assert f"SlurmEngineSetLauncher.{setting}" in r.stderr, r.stderr
    assert "the engine launcher (slurm" in r.stderr, r.stderr
    assert "stopping the cluster" not in r.stderr
    assert not rpar_env.cluster_file().exists()
    assert not (rpar_env.profile_dir / "security" / "ipcontroller-client.json").exists()
