#!/usr/bin/env bash
# The README's test command RUNS times in a row (default 5), each on a fresh clone in a fresh virtual environment
# (what .ci/run does: the CPU build of torch first, then `pip install -e ".[test]" && pytest -q`), while BUSY
# CPU-bound processes (default 4) compete for the cores. Exit 0 only when every run passed (issue 30).
#   bash benchmarks/tests_under_load.sh [RUNS] [BUSY] [REPO]
# The busy processes run in a session of their own (setsid): with Linux's autogroup scheduling, on by default,
# they then compete as one other job would, and the suite gets its share of the cores beside them, not a fifth.
# The load average is sampled every 30 s; each run's line gives its range. Logs stay in the folder it names.
set -u
runs=${1:-5}; busy=${2:-4}; repo=${3:-$(cd "$(dirname "$0")/.." && pwd)}
work=$(mktemp -d /tmp/cmt-load-XXXX)
setsid bash -c "for _ in \$(seq $busy); do python3 -c 'while True: pass' & done; wait" & busy_pid=$!
sleep 1; busy_pgid=$(ps -o pgid= "$busy_pid" | tr -d ' ')
( while sleep 30; do cut -d' ' -f1 /proc/loadavg >> "$work/load"; done ) & sampler=$!
trap 'kill -- -"$busy_pgid" 2>/dev/null; kill "$sampler" 2>/dev/null' EXIT
echo "$(date -u +%FT%TZ) $runs runs of $repo beside $busy busy processes (autogroup $(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null || echo ?)), logs in $work"
passed=0
for i in $(seq "$runs"); do
  d="$work/$i"; : > "$work/load"
  git clone -q "$repo" "$d/cmt" && python3 -m venv "$d/venv" || exit 1
  t0=$(date +%s)
  ( source "$d/venv/bin/activate" && cd "$d/cmt" && python -m pip install -q "torch==2.13.0" \
      && python -m pip install -q -e ".[test]" && python -m pytest -q ) > "$d/log" 2>&1
  rc=$?; [ "$rc" -eq 0 ] && passed=$((passed + 1))
  loads=$(sort -n "$work/load" | sed -n '1p;$p' | tr '\n' ' ')
  echo "run $i at $(git -C "$d/cmt" rev-parse --short HEAD): exit $rc in $(( $(date +%s) - t0 )) s;" \
       "$(tail -n 1 "$d/log" | tr -d '=')"; echo "  load average (1 min) min/max: ${loads:-n/a}"
  rm -rf "$d/venv"
done
echo "$passed of $runs runs passed"
[ "$passed" -eq "$runs" ]
