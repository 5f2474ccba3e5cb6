#!/bin/sh
# The seeded fuzz targets (wire layer, hub, native-transport codec) at length: >= 1 M inputs per
# target by default, printing the count each ran without a panic.
#   bench/fuzz_bench.sh [inputs_per_target] [seed]
set -e
cd "$(dirname "$0")/.."
exec cargo run -q --release -p rpar-controller --example fuzz "${1:-1000000}" "${2:-11}"
