#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, runs every test (Rust and Python).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/install.sh
. ci/env.sh
for s in ci/services/*.sh; do [ -e "$s" ] && bash "$s" start; done
cargo build --workspace --all-targets
cargo test --workspace
python -m pytest -q -ra tests/
