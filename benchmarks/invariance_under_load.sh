#!/usr/bin/env bash
# The worker- and thread-invariance tests, RUNS times in a row (default 10), while BUSY CPU-bound processes
# (default 2: both cores of a 2-core machine) compete for the cores. Exit 0 only when every run passed.
#   bash benchmarks/invariance_under_load.sh [RUNS] [BUSY]
set -u
cd "$(dirname "$0")/.."
runs=${1:-10}; busy=${2:-2}; pids=()
for _ in $(seq "$busy"); do python3 -c "while True: pass" & pids+=($!); done
trap 'kill "${pids[@]}" 2>/dev/null' EXIT
echo "$(date -u +%FT%TZ) commit $(git rev-parse --short HEAD), $busy busy processes, load $(cut -d' ' -f1 /proc/loadavg)"
passed=0
for i in $(seq "$runs"); do
  if python3 -m pytest -q -p no:cacheprovider tests/test_cluster.py tests/test_threads.py \
       -k "bit_identical or thread_count" > /tmp/invariance-$i.log 2>&1; then passed=$((passed + 1)); fi
  echo "run $i: $(tail -n 1 /tmp/invariance-$i.log) (load $(cut -d' ' -f1 /proc/loadavg))"
done
echo "$passed of $runs runs passed"
[ "$passed" -eq "$runs" ]
