#!/usr/bin/env bash
# The README's first command: on a fresh machine, install everything, build rpar, start a local
# cluster whose 4 engines are ONE MPI job (`mpiexec -n 4 rpar-engine`), run a computation on it
# with the unmodified ipyparallel client (mpi4py included), and stop the cluster. The programs are
# installed on PATH (ci/install-prefix.sh: /usr/local/bin as root, else ~/.local/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/install.sh
. ci/env.sh
cargo build --release -p rpar -p rpar-controller -p rpar-engine
# the programs go on PATH: /usr/local/bin as root, else ~/.local/bin (PREFIX=... for another place)
bindir="$(RPAR_INSTALL_FROM=target/release bash ci/install-prefix.sh)"
export PATH="$bindir:$PATH"
export IPYTHONDIR="${IPYTHONDIR:-$(mktemp -d)}"
echo "== rpar profile create --parallel --profile=demo  (IPYTHONDIR=$IPYTHONDIR)"
rpar profile create --parallel --profile=demo
echo "== rpar cluster start --n=4 --profile=demo --daemonize"
rpar cluster start --n=4 --profile=demo --daemonize
trap 'rpar cluster stop --profile=demo || true' EXIT
python - <<'PY'
import ipyparallel as ipp

rc = ipp.Client(profile="demo")
rc.wait_for_engines(4, timeout=60)
dv = rc[:]
print("engines:", rc.ids)
dv.execute("from mpi4py import MPI; comm = MPI.COMM_WORLD; "
           "r = comm.allreduce(comm.rank); rank = comm.rank", block=True)
print("MPI ranks:", dv.pull("rank", block=True), " allreduce(rank):", dv.pull("r", block=True))
lv = rc.load_balanced_view()
squares = lv.map_sync(lambda x: x * x, range(16))
print("load-balanced squares:", squares)
assert squares == [x * x for x in range(16)]
assert dv.pull("r", block=True) == [6, 6, 6, 6]
rc.close()
print("demo: OK")
PY
echo "== rpar cluster stop --profile=demo"
