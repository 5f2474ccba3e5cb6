#!/usr/bin/env bash
# Installs everything the build and the tests need on a fresh Debian 12 machine. Idempotent, quiet.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"

pkgs=(build-essential pkg-config libclang-dev openmpi-bin libopenmpi-dev mpich libmpich-dev
      iproute2 procps psmisc sqlite3)
# libzmq with libsodium (CurveZMQ); .cargo/config.toml links it instead of zmq-sys's vendored copy
pkgs+=(libzmq3-dev)
# headless browser for the status page test (tests/test_cluster_status.py)
pkgs+=(chromium)
# batch systems and ssh for the launcher tests (ci/services/*.sh); slurm-wlm-torque's qsub is
# unpacked beside gridengine's by ci/services/slurm.sh
pkgs+=(munge slurm-wlm slurmctld slurmd slurm-client libslurm-perl libslurmdb-perl libswitch-perl
       gridengine-master gridengine-exec gridengine-client openssh-server openssh-client)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "ci/install.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # gridengine asks for its master and cell; the cluster itself is set up by ci/services/sge.sh
  debconf-set-selections <<'SEL'
gridengine-common shared/gridenginemaster string localhost
gridengine-common shared/gridenginecell string default
gridengine-common shared/gridengineconfig boolean false
postfix postfix/main_mailer_type select No configuration
SEL
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Python environment: the same CPython minor version rpar-engine embeds (python3 on PATH).
if [ ! -x "$RPAR_VENV/bin/python" ]; then
  mkdir -p "$(dirname "$RPAR_VENV")"
  python3 -m venv "$RPAR_VENV"
fi
# pip checks the pins itself: a no-op (about a second) when the venv already matches them.
"$RPAR_VENV/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
