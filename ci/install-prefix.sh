#!/usr/bin/env bash
# Install rpar's programs into a prefix, e.g. for an environment module:
#
#     PREFIX=/opt/rpar/0.1 ci/install-prefix.sh
#
# puts rpar, rpar-controller and rpar-engine in $PREFIX/bin and the job scripts (for submitting
# by hand: `sbatch $PREFIX/share/rpar/jobscripts/slurm.engine`) in $PREFIX/share/rpar/jobscripts,
# then prints a modulefile for that prefix (on stderr; stdout is the bin directory). PREFIX defaults to /usr/local as root, else ~/.local
# (both are on PATH on Debian; ci/demo.sh installs there).
#
# It builds the release programs first (`cargo build --release`, a no-op when they are current);
# RPAR_INSTALL_FROM=target/debug installs an existing build instead (the tests do). rpar-engine
# keeps the MPI library and the Python it was built with (run-time paths are absolute), so build
# it where the site's MPI and Python are the ones the users load (`module load openmpi python`).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PREFIX:-}" ]; then
    if [ "$(id -u)" = 0 ]; then PREFIX=/usr/local; else PREFIX="$HOME/.local"; fi
fi
from="${RPAR_INSTALL_FROM:-}"
if [ -z "$from" ]; then
    cargo build --release -p rpar -p rpar-controller -p rpar-engine
    from=target/release
fi
for p in rpar rpar-controller rpar-engine; do
    [ -x "$from/$p" ] || { echo "install-prefix: $from/$p is missing (build it first)" >&2; exit 1; }
done
mkdir -p "$PREFIX/bin" "$PREFIX/share/rpar/jobscripts"
for p in rpar rpar-controller rpar-engine; do
    # copy to a temporary name, then rename: a running engine keeps its old binary
    install -m 0755 "$from/$p" "$PREFIX/bin/.$p.new"
    mv -f "$PREFIX/bin/.$p.new" "$PREFIX/bin/$p"
done
install -m 0644 jobscripts/* "$PREFIX/share/rpar/jobscripts/"
echo "installed rpar, rpar-controller and rpar-engine into $PREFIX/bin" >&2
case ":$PATH:" in
    *":$PREFIX/bin:"*) ;;
    *) echo "note: $PREFIX/bin is not on PATH here; add it (export PATH=\"$PREFIX/bin:\$PATH\") or use the module below" >&2 ;;
esac
cat >&2 <<EOF
# a modulefile (Tcl; save as e.g. modulefiles/rpar/$(basename "$PREFIX")):
#%Module1.0
module-whatis "rpar: MPI-native controller and engines for IPython Parallel"
prepend-path PATH $PREFIX/bin
EOF
echo "$PREFIX/bin"
