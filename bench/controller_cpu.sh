#!/usr/bin/env bash
# Controller CPU per no-op task with no Python anywhere: rpar-controller, rpar-loadgen's simulated
# engines and rpar-loadclient's load-balanced client. Prints tasks/s and the controller's
# utime+stime (from /proc/PID/stat) per task, for each engine count.
# Usage: bench/controller_cpu.sh [TASKS] [WINDOW] [ENGINES...]  (binaries from target/$PROFILE,
# default release; CTL=path runs another controller binary, e.g. an older build, to compare)
set -euo pipefail
tasks=${1:-200000}; window=${2:-512}; shift 2 || true
if [ $# -gt 0 ]; then engines=("$@"); else engines=(8 64); fi
bin=${BIN:-target/${PROFILE:-release}}
tick=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
for n in "${engines[@]}"; do
  dir=$(mktemp -d); prof=$dir/profile_bench
  "${CTL:-$bin/rpar-controller}" --profile-dir="$prof" --ip=127.0.0.1 >"$dir/ctl.log" 2>&1 &
  ctl=$!
  for _ in $(seq 100); do [ -f "$prof/security/ipcontroller-engine.json" ] && [ -f "$prof/security/ipcontroller-client.json" ] && break; sleep 0.1; done
  "$bin/rpar-loadgen" --engines="$n" --jobs=2 --profile-dir="$prof" >"$dir/lg.log" 2>&1 &
  lg=$!
  # warm-up (registration, first connections), then the measured run
  "$bin/rpar-loadclient" --tasks=2000 --window="$window" --min-engines="$n" --profile-dir="$prof" >/dev/null
  c0=$(cpu $ctl)
  out=$("$bin/rpar-loadclient" --tasks="$tasks" --window="$window" --min-engines="$n" --profile-dir="$prof" --json)
  c1=$(cpu $ctl)
  kill -TERM $lg $ctl 2>/dev/null || true; wait $lg $ctl 2>/dev/null || true
  python3 - "$n" "$tasks" "$window" "$c0" "$c1" "$tick" "$out" <<'PY'
import json, sys
n, tasks, window, c0, c1, tick = map(int, sys.argv[1:7]); r = json.loads(sys.argv[7])
us = (c1 - c0) / tick * 1e6 / tasks
print(f"engines={n} window={window} tasks={tasks} ok={r.get('ok')} "
      f"tasks/s={r.get('tasks_per_s', r.get('rate', '?'))} controller_cpu_per_task_us={us:.1f}")
PY
  rm -rf "$dir"
done
