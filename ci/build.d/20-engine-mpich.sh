#!/usr/bin/env bash
# rpar-engine built against MPICH (mpicc.mpich) into its own target dir, for the MPICH tests
# (tests/test_engine_*.py pick target/mpich/debug/rpar-engine and run it with mpiexec.mpich).
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v mpicc.mpich >/dev/null; then
  echo "ci/build.d/20-engine-mpich.sh: mpicc.mpich not found (apt-get install mpich libmpich-dev); skipping" >&2
  exit 0
fi
MPICC=mpicc.mpich CARGO_TARGET_DIR=target/mpich cargo build -q -p rpar-engine
