#!/usr/bin/env bash
# A single-node Slurm (munge, slurmctld, slurmd) for the launcher tests.
#   ci/services/slurm.sh start|stop|status
# The node advertises CPUs=8 (SlurmdParameters=config_overrides) so 4-rank jobs run on 2 cores.
# Idempotent: start does nothing if Slurm already answers. Logs: /var/log/rpar-ci/slurm*.log.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/../env.sh"
log=/var/log/rpar-ci; mkdir -p "$log"
host="$(hostname)"
conf=/etc/slurm/slurm.conf

install() {
  local pkgs=(munge slurm-wlm slurmctld slurmd slurm-client) missing=()
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  install_torque
}

# slurm-wlm-torque's PBS front end (qsub, qdel, qstat) conflicts with gridengine-client's qsub,
# so it is unpacked beside it: /opt/rpar/torque/bin, next to links to Slurm's commands (the
# wrappers call "$their_dir/sbatch").
torque=/opt/rpar/torque
install_torque() {
  [ -x "$torque/bin/qsub" ] && return 0
  local perl=(libslurm-perl libslurmdb-perl libswitch-perl) missing=()
  for p in "${perl[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  local tmp; tmp="$(mktemp -d)"
  chmod 755 "$tmp"; (cd "$tmp" && apt-get download -qq slurm-wlm-torque >/dev/null 2>&1 && dpkg -x slurm-wlm-torque_*.deb x)
  mkdir -p "$torque/bin"
  for f in qsub qdel qstat qhold qrls qalter pbsnodes generate_pbs_nodefile; do
    [ -e "$tmp/x/usr/bin/$f" ] && cp "$tmp/x/usr/bin/$f" "$torque/bin/$f"
  done
  for f in sbatch scancel squeue srun salloc scontrol sinfo; do ln -sf "/usr/bin/$f" "$torque/bin/$f"; done
  rm -rf "$tmp"
}

write_conf() {
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /run/slurm
  cat > "$conf.new" <<CONF
# written by rpar ci/services/slurm.sh
ClusterName=rparci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=$log/slurmctld.log
SlurmdLogFile=$log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
KillWait=5
InactiveLimit=0
MinJobAge=10
SlurmctldTimeout=30
SlurmdTimeout=30
JobCompType=jobcomp/none
NodeName=$host CPUs=8 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
  mv "$conf.new" "$conf"
  echo "" > /etc/slurm/cgroup.conf
}

start_munge() {
  if ! pgrep -x munged >/dev/null; then
    [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge; chown munge:munge /run/munge /var/log/munge /var/lib/munge
    su -s /bin/sh munge -c "/usr/sbin/munged" || /usr/sbin/munged --force
  fi
  munge -n | unmunge >/dev/null
}

up() { timeout 5 sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mixed|alloc'; }

start() {
  install
  if up; then echo "slurm: already running"; return 0; fi
  write_conf
  start_munge
  pgrep -x slurmctld >/dev/null || slurmctld
  pgrep -x slurmd >/dev/null || slurmd
  for _ in $(seq 1 60); do
    if up; then echo "slurm: up ($host, 8 CPUs)"; return 0; fi
    scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
    sleep 0.5
  done
  echo "slurm: did not come up; see $log/slurmctld.log and $log/slurmd.log" >&2
  sinfo >&2 || true
  return 1
}

stop() {
  if command -v scancel >/dev/null && up; then scancel --user=root >/dev/null 2>&1 || true; fi
  local pids=()
  for f in /run/slurm/slurmd.pid /run/slurm/slurmctld.pid /run/munge/munged.pid; do
    [ -s "$f" ] && pids+=("$(cat "$f")")
  done
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 0.1
  done
  echo "slurm: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) up && sinfo ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
