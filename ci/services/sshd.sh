#!/usr/bin/env bash
# An sshd on a "remote host": a network namespace joined to this host by a veth pair, for the
# ssh launcher tests.
#   ci/services/sshd.sh start|stop|status
# Addresses: this host 10.200.0.1, the namespace host 10.200.0.2 (no default route there).
# Before any veth gets an address, `unreachable 10.200.0.0/16` is routed in the root namespace,
# so no packet for the test range can leave the machine: traffic goes only to loopback and the
# namespace. The client key is /etc/rpar-ci/ssh/id_ed25519 (its own authorized_keys file: nothing
# in ~/.ssh is touched). The namespace shares the file system, as cluster nodes would.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/../env.sh"
ns=rparssh
dir=/etc/rpar-ci/ssh
log=/var/log/rpar-ci; mkdir -p "$log"
pidfile=/run/rpar-ci-sshd.pid
remote=10.200.0.2

install() {
  if [ ! -x /usr/sbin/sshd ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server openssh-client >/dev/null
  fi
}

up() {
  [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null &&
    timeout 10 ssh -i "$dir/id_ed25519" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
      -o LogLevel=ERROR -o ConnectTimeout=3 root@$remote true 2>/dev/null
}

network() {
  ip route replace unreachable 10.200.0.0/16
  ip netns list | grep -qw "$ns" || ip netns add "$ns"
  if ! ip link show rpar-h0 >/dev/null 2>&1; then
    ip link add rpar-h0 type veth peer name rpar-h1
    ip link set rpar-h1 netns "$ns"
  fi
  ip addr replace 10.200.0.1/24 dev rpar-h0
  ip link set rpar-h0 up
  ip netns exec "$ns" ip addr replace $remote/24 dev rpar-h1
  ip netns exec "$ns" ip link set rpar-h1 up
  ip netns exec "$ns" ip link set lo up
}

keys() {
  mkdir -p "$dir" /run/sshd; chmod 700 "$dir"
  [ -s "$dir/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C rpar-ci -f "$dir/id_ed25519"
  [ -s "$dir/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C rpar-ci-host -f "$dir/host_ed25519"
  cp "$dir/id_ed25519.pub" "$dir/authorized_keys"; chmod 600 "$dir/authorized_keys"
  cat > "$dir/sshd_config" <<CONF
ListenAddress $remote
Port 22
HostKey $dir/host_ed25519
PidFile $pidfile
AuthorizedKeysFile $dir/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitUserEnvironment no
AcceptEnv IPP_* RPAR_*
LogLevel INFO
MaxStartups 50:30:100
MaxSessions 50
Subsystem sftp internal-sftp
CONF
}

start() {
  install
  if up; then echo "sshd: already running ($remote)"; return 0; fi
  network
  keys
  if ! { [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }; then
    ip netns exec "$ns" /usr/sbin/sshd -f "$dir/sshd_config" -E "$log/sshd.log"
  fi
  for _ in $(seq 1 50); do
    if up; then echo "sshd: up on $remote (namespace $ns), key $dir/id_ed25519"; return 0; fi
    sleep 0.2
  done
  echo "sshd: not reachable on $remote; see $log/sshd.log" >&2
  return 1
}

stop() {
  if [ -s "$pidfile" ]; then
    kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  fi
  ip link del rpar-h0 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  echo "sshd: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) up && echo "sshd: up on $remote" ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
