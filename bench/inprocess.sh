#!/bin/bash
# The in-process benchmark with all three profilers in one run (bench/README.md
# §7): smolder::Profiler and pprof-rs from `smolder-bench inprocess`, and
# pyroscope-rs (its pprof-rs backend) from `smolder-bench-pyroscope`, a crate
# of its own (bench/pyroscope) that cannot be linked with smolder. Every run
# is a fresh child process on the same workload (src/workload.rs); the order
# of the 7 configurations is rotated every round, so the ratios come from
# the same run on the same load.
#
#   bench/inprocess.sh [--runs N] [--rounds N]      # from anywhere; default 3 runs
#
# Both are release builds in the workspace's target directory ($CARGO_TARGET_DIR
# if set), built with `nice -n 10`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
export CARGO_TARGET_DIR=$target
(cd "$root" && nice -n 10 cargo build --release --locked -p smolder-bench)
(cd "$root/bench/pyroscope" && nice -n 10 cargo build --release --locked)
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$target/release/smolder-bench" inprocess --pyroscope "$target/release/smolder-bench-pyroscope" "$@"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
