#!/bin/sh
# The controller-loop cost of one BroadcastView request by number of targets (issue 11: it was
# quadratic, 16 000 targets froze the loop for 36 s). Prints one line per target count; the
# per-target figure stays flat when the work is linear.
#   bench/broadcast_bench.sh [max_targets]     (default 16384)
set -e
cd "$(dirname "$0")/.."
exec cargo run -q --release -p rpar-sched --example broadcast_cost "${1:-16384}"
