#!/usr/bin/env bash
# Where a 3-member Cairn cluster's CPU goes under Put load: runs the cluster bench (Cairn only) at
# the given concurrency, records every CPU with `perf` for 6 s in the middle of the put row, and
# prints the members' and the load generator's samples by category (scripts/perf-categories.py).
#
#   scripts/put-profile.sh 256            # 1, 16 or 256 clients
#
# Needs perf (Debian: linux-perf) and a release build of the bench:
# `cargo bench -p cairn-server --bench cluster --no-run`.
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-256}
out=${2:-target/put-profile-$clients.data}
bench=$(ls -t target/release/deps/cluster-* | grep -v '\.d$' | head -1)
CAIRN_BENCH_SECS=16 CAIRN_BENCH_SYSTEMS=cairn CAIRN_BENCH_CLIENTS=$clients "$bench" --bench \
  >target/put-profile-bench.txt 2>&1 &
bench_pid=$!
# Members start, settle 3 s and connect; the put row then runs 16 s.
sleep 9
perf record -F 2000 -a -g -o "$out" -- sleep 6 >/dev/null 2>&1
wait "$bench_pid"
grep "put x$clients" target/put-profile-bench.txt
python3 scripts/perf-categories.py "$out"
