#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, runs every test (Rust and Python).
#   ci/services/*.sh start   start the services tests need (Slurm, SGE, sshd in namespaces...)
#   ci/build.d/*.sh          extra builds (e.g. rpar-engine against MPICH)
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/install.sh
. ci/env.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --all-targets
for s in ci/build.d/*.sh; do [ -e "$s" ] && bash "$s"; done
for s in ci/services/*.sh; do [ -e "$s" ] && bash "$s" start; done
cargo test --workspace
python -m pytest -q -ra tests/
