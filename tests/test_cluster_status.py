"""`rpar cluster status`, the controller's Prometheus endpoint and its status page, against a
real cluster: `rpar cluster start --engines=mpi` (one mpiexec job of rpar-engine ranks) plus a
real Python ipengine, driven by the real ipyparallel client.

The tests share one cluster (module fixture) and run in file order; the last one kills the
Python ipengine with SIGKILL and checks that it is shown dead.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import engine_env
from util_cluster import RparEnv, remote, rpar_path, wait_for

N_MPI = 2
N_TASKS = 24


@remote
def square(x):
    return x * x


@remote
def boom():
    return 1 / 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    env = RparEnv(tmp_path_factory.mktemp("status"))
    env.create_profile()
    # fast heartbeats, so a killed engine is declared dead in about a second
    (env.profile_dir / "ipcontroller_config.py").write_text(
        "c = get_config()\n"
        "c.HeartMonitor.period = 250\n"
        "c.HeartMonitor.max_heartmonitor_misses = 4\n"
    )
    started = env.start(f"--n={N_MPI}", "--engines=mpi", "--", "--metrics=127.0.0.1:0")
    security = env.profile_dir / "security"
    status_file = json.loads((security / "rpar-status.json").read_text())
    log = open(env.ipython_dir.parent / "ipengine.log", "w")
    ipengine = subprocess.Popen(
        [sys.executable, "-m", "ipyparallel.engine", f"--file={security / 'ipcontroller-engine.json'}"],
        stdout=log, stderr=subprocess.STDOUT, env=engine_env(env.env),
    )
    rc = env.client(n=N_MPI + 1)
    try:
        yield {"env": env, "start": started, "file": status_file, "rc": rc, "ipengine": ipengine}
    finally:
        rc.close()
        if ipengine.poll() is None:
            ipengine.kill()
        ipengine.wait(10)
        log.close()
        env.cleanup()


def status_json(env):
    r = env.rpar("cluster", "status", f"--profile={env.profile}", "--json", timeout=60)
    return json.loads(r.stdout)


def wait_status(env, pred, what):
    """The status as soon as `pred` holds (snapshots are taken once a second)."""
    return wait_for(lambda: (lambda s: s if pred(s) else None)(status_json(env)), timeout=30, interval=0.3, what=what)


def get(url, token=None, header=False):
    req = urllib.request.Request(url if (token is None or header) else f"{url}?token={token}")
    if header and token is not None:
        req.add_header("Authorization", f"token {token}")
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.read().decode()


def test_start_prints_the_status_url(cluster):
    f = cluster["file"]
    assert f["url"].startswith("http://127.0.0.1:") and len(f["token"]) == 32
    assert f"rpar: status page: {f['url']}?token={f['token']}" in cluster["start"].stderr
    mode = (cluster["env"].profile_dir / "security" / "rpar-status.json").stat().st_mode & 0o777
    assert mode == 0o600


def test_status_table_and_json_after_a_map(cluster):
    env, rc = cluster["env"], cluster["rc"]
    view = rc.load_balanced_view()
    assert view.map_sync(square, range(N_TASKS)) == [x * x for x in range(N_TASKS)]
    ar = rc[-1].apply_async(boom)
    with pytest.raises(Exception):
        ar.get(timeout=60)
    s = wait_status(env, lambda s: s["tasks"]["completed"] >= N_TASKS and s["tasks"]["failed"] >= 1,
                    "the map's tasks in the status")
    assert s["source"] == "api"
    assert s["engines"]["registered"] == N_MPI + 1
    assert s["tasks"]["completed"] == N_TASKS and s["tasks"]["failed"] == 1
    assert s["tasks"]["submitted"] == N_TASKS + 1
    assert s["tasks"]["queued"] == 0 and s["tasks"]["running"] == 0
    kinds = sorted((j["kind"], j["registered"]) for j in s["jobs"])
    assert kinds == [("ipengine", 1), ("rpar-engine", N_MPI)], s["jobs"]
    mpi = next(j for j in s["jobs"] if j["kind"] == "rpar-engine")
    assert mpi["size"] == N_MPI and len(mpi["ids"]) == N_MPI
    assert sum(j["completed"] for j in s["jobs"]) == N_TASKS + 1  # the failed one counts as done
    assert s["failures"][-1]["ename"] == "ZeroDivisionError"
    assert len(s["engine_rows"]) == N_MPI + 1
    assert all(r["state"] == "idle" for r in s["engine_rows"])

    table = env.rpar("cluster", "status", f"--profile={env.profile}").stdout
    assert all(len(line) <= 100 for line in table.splitlines()), table
    assert f"engines     {N_MPI + 1} registered: 0 busy, {N_MPI + 1} idle; 0 dead" in table, table
    assert f"completed {N_TASKS}  failed 1" in table, table
    assert mpi["job"][:22] in table and "ZeroDivisionError" in table, table
    assert cluster["file"]["token"] in table  # the URL with its token


def test_metrics_parsed_by_prometheus_client(cluster):
    from prometheus_client.parser import text_string_to_metric_families

    f = cluster["file"]
    url = f["url"] + "metrics"
    for token in (None, "wrong"):
        with pytest.raises(urllib.error.HTTPError) as e:
            get(url, token)
        assert e.value.code in (401, 403)
    status, text = get(url, f["token"], header=True)
    assert status == 200
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert samples[("rpar_tasks_finished_total", (("outcome", "ok"),))] == N_TASKS
    assert samples[("rpar_tasks_finished_total", (("outcome", "error"),))] == 1
    assert samples[("rpar_tasks_submitted_total", ())] == N_TASKS + 1
    assert samples[("rpar_engines", (("state", "idle"),))] == N_MPI + 1
    assert samples[("rpar_registrations_total", ())] == N_MPI + 1
    assert samples[("rpar_heartbeats_total", ())] > 0
    assert samples[("rpar_queue_depth", (("scheduler", "task"),))] == 0
    assert samples[("rpar_db_backlog_bytes", (("backend", "DictDB"),))] == 0
    # the task sockets carried at least the map's requests and replies
    assert samples[("rpar_socket_received_messages_total", (("socket", "task_client"),))] >= N_TASKS
    # tasks reach the Python ipengine on task_engine and rpar-engine jobs on their native connection
    sent = lambda sock: samples[("rpar_socket_sent_messages_total", (("socket", sock),))]  # noqa: E731
    assert sent("task_engine") + sent("native") >= N_TASKS
    assert sent("task_engine") > 0
    assert samples[("rpar_socket_received_bytes_total", (("socket", "task_engine"),))] > 0


def chromium():
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("chromium is missing: ci/install.sh installs Debian's chromium")


def test_status_page_in_headless_chromium(cluster, tmp_path):
    f = cluster["file"]
    page = f"{f['url']}?token={f['token']}"
    status, html = get(f["url"], f["token"])
    assert status == 200 and "rpar cluster status" in html
    with pytest.raises(urllib.error.HTTPError) as e:
        get(f["url"])
    assert e.value.code == 401
    artefacts = Path(os.environ.get("RPAR_TEST_ARTIFACTS", "/tmp/rpar-artifacts"))
    artefacts.mkdir(parents=True, exist_ok=True)
    shot = artefacts / "status-page.png"
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--virtual-time-budget=5000"]
    run = lambda *extra: subprocess.run(  # noqa: E731
        [*base, f"--user-data-dir={tmp_path / ('chrome-' + str(len(extra)))}", *extra, page],
        capture_output=True, text=True, timeout=120)
    dom = run("--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = dom.stdout
    assert 'data-loaded="1"' in text, text[:2000]

    def by_id(i):
        start = text.index(f'id="{i}"')
        return text[text.index(">", start) + 1:text.index("<", start)]

    assert int(by_id("engines-total")) == N_MPI + 1
    assert int(by_id("tasks-completed")) == N_TASKS
    assert int(by_id("tasks-failed")) == 1
    assert text.count('class="job"') == 2
    assert "ZeroDivisionError" in text
    r = run(f"--screenshot={shot}", "--window-size=1200,900")
    assert r.returncode == 0 and shot.stat().st_size > 10_000, r.stderr[-2000:]


def test_watch_redraws_as_tasks_complete(cluster):
    """`--watch` redraws the table in place; a map run meanwhile shows up in a later screen, and
    the command ends cleanly when its reader goes away."""
    env, rc = cluster["env"], cluster["rc"]
    before = status_json(env)["tasks"]["completed"]
    p = subprocess.Popen(
        [rpar_path(), "cluster", "status", f"--profile={env.profile}", "--watch", "--interval=0.3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env.env,
    )
    clear = b"\x1b[H\x1b[2J"
    out = b""

    def complete_screens():
        # every screen starts with the clear sequence; the last one may still be half written
        return [x for x in out.split(clear) if x][:-1]

    try:
        view = rc.load_balanced_view()
        assert view.map_sync(square, range(10)) == [x * x for x in range(10)]
        want = f"completed {before + 10} ".encode()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(want in sc for sc in complete_screens()):
            chunk = p.stdout.read1(65536)
            if not chunk:
                break
            out += chunk
        done = complete_screens()
        assert out.startswith(clear), out[:200]
        assert any(want in sc for sc in done), (want, out[-3000:])
        assert len(done) >= 2, "redrawn at least once"
        assert all(len(line) <= 100 for line in done[-1].decode().splitlines())
    finally:
        p.stdout.close()  # the reader goes away: the next redraw ends the command
        try:
            rc_ = p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
            raise AssertionError("rpar cluster status --watch kept running after its reader left")
    assert rc_ == 0, p.stderr.read().decode()


def test_killed_engine_is_shown_dead(cluster):
    env, ipengine = cluster["env"], cluster["ipengine"]
    os.kill(ipengine.pid, signal.SIGKILL)
    ipengine.wait(10)
    s = wait_status(env, lambda s: s["engines"]["dead"] == 1, "the killed ipengine shown dead")
    assert s["engines"]["registered"] == N_MPI
    ip = next(j for j in s["jobs"] if j["kind"] == "ipengine")
    assert (ip["registered"], ip["dead"], len(ip["dead_ids"])) == (0, 1, 1)
    table = env.rpar("cluster", "status", f"--profile={env.profile}").stdout
    assert f"{N_MPI} registered: 0 busy, {N_MPI} idle; 1 dead" in table, table
    assert "(dead " in table, table


def test_not_running_names_the_profile(tmp_path):
    env = RparEnv(tmp_path)
    env.create_profile()
    r = env.rpar("cluster", "status", f"--profile={env.profile}", check=False)
    assert r.returncode != 0
    assert "no cluster is running" in r.stderr and str(env.profile_dir) in r.stderr, r.stderr


def test_without_metrics_status_uses_hub_queries(ipython_dir):
    """A controller started without --metrics: the figures come from the hub's queue_request."""
    from conftest import Controller, Engines

    pd = ipython_dir / "profile_plain"
    ctl = Controller(pd)
    engines = Engines(ctl, 1)
    rc = ctl.client()
    try:
        rc.wait_for_engines(1, timeout=60)
        assert rc.load_balanced_view().map_sync(square, range(5)) == [x * x for x in range(5)]
        env = dict(os.environ, IPYTHONDIR=str(ipython_dir))
        r = subprocess.run([rpar_path(), "cluster", "status", f"--profile-dir={pd}", "--json"],
                           capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout)
        assert s["source"] == "hub" and s["page_url"] is None
        assert s["engines"]["registered"] == 1 and s["tasks"]["completed"] == 5
        assert not (pd / "security" / "rpar-status.json").exists()
        r = subprocess.run([rpar_path(), "cluster", "status", f"--profile-dir={pd}"],
                           capture_output=True, text=True, env=env, timeout=60)
        assert "1 registered: 0 busy, 1 idle" in r.stdout, r.stdout
    finally:
        rc.close()
        engines.stop()
        ctl.stop()
