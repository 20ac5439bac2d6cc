#!/usr/bin/env bash
# Runs the benchmark suite (issue 6): builds the release binaries, then runs autonomy-bench
# against the real `autonomy serve`. Every argument goes to autonomy-bench, e.g.
#
#   scripts/bench.sh                  # full run: 1M plans, takes minutes
#   scripts/bench.sh --smoke          # tiny sizes, about a minute (what CI runs)
#   scripts/bench.sh --phases b1,b2   # some phases only; see --help for every size flag
#   scripts/bench.sh --phases limit,e1,e2,e3,e4,e5   # the rollout engine (issue 10)
#   scripts/bench.sh --phases limit,p1,p2   # PostgreSQL and replicas (issue 12; as root: it
#                                           # starts a throwaway cluster with scripts/ci/postgres.sh)
#
# The report goes to bench-results/<UTC timestamp>/report.json (with summary.txt and the CP
# logs next to it) unless --out says otherwise. Exit 0 when the bench ran, whatever the
# numbers; it asserts nothing about timings.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-target}"

cargo build --release -p autonomy -p autonomy-bench
exec "$target_dir/release/autonomy-bench" --autonomy-bin "$target_dir/release/autonomy" "$@"
