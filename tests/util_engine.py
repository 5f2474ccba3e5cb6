"""Helpers for the rpar-engine tests: start `mpiexec -n N rpar-engine` (OpenMPI or MPICH build),
find its processes, and check that nothing is left behind."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent

# flavour -> (mpiexec, rpar-engine binary)
MPI_FLAVOURS = {
    "openmpi": ("mpiexec.openmpi", ROOT / "target" / "debug" / "rpar-engine"),
    "mpich": ("mpiexec.mpich", ROOT / "target" / "mpich" / "debug" / "rpar-engine"),
}


def engine_binary(flavour):
    """(mpiexec, binary) for an MPI flavour; skips when that MPI or build is missing."""
    mpiexec, binary = MPI_FLAVOURS[flavour]
    if shutil.which(mpiexec) is None:
        pytest.skip(f"{mpiexec} not installed")
    if not binary.exists():
        if flavour == "openmpi":
            pytest.fail(f"{binary} missing: run `cargo build -p rpar-engine`")
        pytest.skip(f"{binary} missing: run ci/build.d/20-engine-mpich.sh")
    return mpiexec, str(binary)


def rpar_controller_available():
    return (ROOT / "target" / "debug" / "rpar-controller").exists()


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _environ(pid):
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    env = {}
    for kv in raw:
        k, _, v = kv.partition(b"=")
        env[k.decode(errors="replace")] = v.decode(errors="replace")
    return env


def engine_pids(marker):
    """pids of rpar-engine processes whose command line contains `marker` (the nanny included)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        cmd = _cmdline(d.name)
        if not cmd or not cmd[0].endswith(b"rpar-engine"):
            continue
        if any(marker.encode() in a for a in cmd):
            try:
                stat = Path(f"/proc/{d.name}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue
            out.append(int(d.name))
    return out


def rank_of(pid):
    env = _environ(pid)
    for k in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"):
        if k in env:
            return int(env[k])
    return None


def _ldd(binary):
    try:
        return subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    except OSError:
        return ""


def mpich_abi_dir(binary, where):
    """A directory to put on LD_LIBRARY_PATH so that `libmpi.so.12` resolves to the MPICH library
    `binary` runs with, or None when the loader already finds it.

    mpi4py >= 4.1 wheels carry an MPICH-ABI module that needs `libmpi.so.12` (MPICH's upstream
    soname); Debian 12's libmpich12 ships only `libmpich.so.12` (newer Debian adds the
    `libmpi.so.12` link). The link makes the loader map the library rpar-engine already has, so
    mpi4py and the relay share one MPI."""
    if "libmpi.so.12 " in subprocess.run(
        ["/sbin/ldconfig", "-p"], capture_output=True, text=True
    ).stdout:
        return None
    for line in _ldd(binary).splitlines():
        name, _, rest = line.strip().partition(" => ")
        if name.startswith("libmpich.so.12") and rest:
            target = rest.split(" (")[0].strip()
            d = Path(where) / "mpich-abi"
            d.mkdir(parents=True, exist_ok=True)
            link = d / "libmpi.so.12"
            if not link.is_symlink():
                link.symlink_to(target)
            return d
    return None


class EngineJob:
    """`mpiexec -n N rpar-engine --profile-dir=...` in its own session."""

    def __init__(self, flavour, n, profile_dir, args=(), env=None, prefix=()):
        mpiexec, binary = engine_binary(flavour)
        self.marker = f"--profile-dir={profile_dir}"
        self.log_path = Path(profile_dir).parent / f"rpar-engine-{flavour}-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w")
        cmd = list(prefix) + [mpiexec, "-n", str(n), binary, self.marker] + list(args)
        e = dict(os.environ, **(env or {}))
        e["PYTHONPATH"] = str(Path(__file__).resolve().parent) + (
            os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else ""
        )
        if flavour == "mpich":
            abi = mpich_abi_dir(binary, Path(profile_dir).parent)
            if abi is not None:
                e["LD_LIBRARY_PATH"] = str(abi) + (
                    os.pathsep + e["LD_LIBRARY_PATH"] if e.get("LD_LIBRARY_PATH") else ""
                )
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env=e, start_new_session=True
        )

    def output(self):
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def pids(self):
        return engine_pids(self.marker)

    def rank_pid(self, rank):
        """The pid of MPI rank `rank` (not the nanny, which shares rank 0's environment)."""
        cands = [p for p in self.pids() if rank_of(p) == rank]
        if rank == 0 and len(cands) > 1:
            # the nanny is rank 0's child: take the parent
            ppids = {}
            for p in cands:
                try:
                    ppids[p] = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
                except OSError:
                    pass
            cands = [p for p in cands if ppids.get(p) not in cands]
            # after setsid the nanny may be reparented: keep the one whose parent is mpiexec's tree
            cands = [p for p in cands if os.getsid(p) != p] or cands
        assert len(cands) == 1, f"rank {rank}: candidates {cands}"
        return cands[0]

    def wait(self, timeout):
        return self.proc.wait(timeout)

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        for p in self.pids():
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()


def wait_until(pred, timeout, what, interval=0.1):
    return wait_for(pred, timeout=timeout, interval=interval, what=what)
