#!/usr/bin/env bash
# A single-host Grid Engine (SGE 8, Debian's gridengine packages) for the launcher tests.
#   ci/services/sge.sh start|stop|status
# qmaster + execd on this host, queue all.q (8 slots), parallel environment `smp`,
# min_uid 0 (CI runs as root), a 1 s scheduler interval. SGE insists that a host's name and
# its address resolve to the same name; here 127.0.0.1 is `localhost` while hostname is
# something else, so `localhost <hostname>` go into host_aliases and localhost is the master.
# SGE's qsub is /usr/bin/qsub (Torque's qsub from slurm-wlm-torque lives in /opt/rpar/torque).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/../env.sh"
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
common="$SGE_ROOT/$SGE_CELL/common"
log=/var/log/rpar-ci; mkdir -p "$log"
host="$(hostname)"
pidfile_q=/var/spool/gridengine/qmaster/qmaster.pid
pidfile_e=/var/spool/gridengine/execd/localhost/execd.pid

install() {
  local pkgs=(gridengine-master gridengine-exec gridengine-client) missing=()
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    echo "gridengine-common shared/gridenginemaster string localhost" | debconf-set-selections
    echo "gridengine-common shared/gridenginecell string default" | debconf-set-selections
    echo "gridengine-common shared/gridengineconfig boolean false" | debconf-set-selections
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# up: the queue's host reports load (no state: an 'u' host means sge_execd is gone)
up() { timeout 5 qstat -f 2>/dev/null | grep -q '^all.q@localhost.*lx-amd64 *$'; }
master_up() { timeout 5 qconf -sm >/dev/null 2>&1; }

edit_with() { # edit_with SED_EXPR qconf-args...  (qconf opens $EDITOR on a template)
  local expr="$1"; shift
  local ed; ed="$(mktemp)"; printf '#!/bin/sh\nsed -i %q "$1"\n' "$expr" > "$ed"; chmod +x "$ed"
  EDITOR="$ed" qconf "$@" >/dev/null; rm -f "$ed"
}

configure() {
  qconf -as localhost >/dev/null 2>&1 || true
  qconf -am root >/dev/null 2>&1 || true
  local t; t="$(mktemp)"
  if ! qconf -sconf global | grep -q '^min_uid *0$'; then
    edit_with 's/^min_uid .*/min_uid 0/; s/^min_gid .*/min_gid 0/' -mconf global
  fi
  qconf -ssconf > "$t"
  sed -i -e 's/^schedule_interval .*/schedule_interval 0:0:1/' -e 's/^job_load_adjustments .*/job_load_adjustments NONE/' "$t"
  qconf -Msconf "$t" >/dev/null 2>&1 || true
  if ! qconf -se localhost >/dev/null 2>&1; then
    printf 'hostname localhost\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n' > "$t"
    qconf -Ae "$t" >/dev/null
  fi
  if ! qconf -sp smp >/dev/null 2>&1; then
    printf 'pe_name smp\nslots 999\nuser_lists NONE\nxuser_lists NONE\nstart_proc_args NONE\nstop_proc_args NONE\nallocation_rule $pe_slots\ncontrol_slaves TRUE\njob_is_first_task FALSE\nurgency_slots min\naccounting_summary FALSE\nqsort_args NONE\n' > "$t"
    qconf -Ap "$t" >/dev/null
  fi
  if qconf -sq all.q >/dev/null 2>&1; then
    # busy CI machines: never hold jobs back for load
    qconf -rattr queue load_thresholds NONE all.q >/dev/null 2>&1 || true
  else
    edit_with 's/^hostlist .*/hostlist localhost/; s/^slots .*/slots 8/; s/^pe_list .*/pe_list smp/; s/^shell .*/shell \/bin\/sh/; s/^load_thresholds .*/load_thresholds NONE/' -aq all.q
  fi
  rm -f "$t"
}

start() {
  install
  if up; then echo "sge: already running"; return 0; fi
  mkdir -p /var/spool/gridengine/spooldb /var/spool/gridengine/qmaster /var/spool/gridengine/execd
  if [ ! -e /var/spool/gridengine/spooldb/sge ]; then
    /usr/share/gridengine/scripts/init_cluster "$SGE_ROOT" "$SGE_CELL" /var/spool/gridengine/spooldb sgeadmin > "$log/sge-init.log"
  fi
  echo "localhost $host" > "$common/host_aliases"
  echo localhost > "$common/act_qmaster"
  chown -R sgeadmin: /var/spool/gridengine "$common"
  master_up || /usr/sbin/sge_qmaster
  for _ in $(seq 1 50); do master_up && break; sleep 0.2; done
  master_up || { echo "sge: qmaster did not start; see /var/spool/gridengine/qmaster/messages" >&2; return 1; }
  configure
  if ! { [ -s "$pidfile_e" ] && kill -0 "$(cat "$pidfile_e")" 2>/dev/null; }; then /usr/sbin/sge_execd; fi
  for _ in $(seq 1 100); do
    if qstat -f 2>/dev/null | grep -q '^all.q@localhost.*lx-amd64 *$'; then echo "sge: up (all.q, pe smp)"; return 0; fi
    sleep 0.2
  done
  echo "sge: the exec host did not come up; see /var/spool/gridengine/execd/localhost/messages" >&2
  qstat -f >&2 || true
  return 1
}

stop() {
  if master_up; then
    qdel -u root '*' >/dev/null 2>&1 || true
  fi
  local pids=()
  for f in "$pidfile_e" "$pidfile_q"; do [ -s "$f" ] && pids+=("$(cat "$f")"); done
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 0.1
  done
  for _ in $(seq 1 100); do master_up || break; sleep 0.1; done
  echo "sge: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) up && qstat -f ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
