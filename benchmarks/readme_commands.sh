#!/usr/bin/env bash
# The README's two commands, each in a fresh virtual environment on a fresh clone (issue 7's check).
#
#     bash benchmarks/readme_commands.sh [REPO]        # REPO: what to clone (default: this checkout)
#
# Both venvs first get the CPU build of torch (`pip install torch==2.13.0`, as the README advises for a machine
# without a GPU and as .ci/run does), then run exactly the README's lines. Prints each step's wall time and exit
# status, the pipeline's report and the tests' summary; full logs stay in the temporary folder it names.
set -uo pipefail
repo=${1:-$(cd "$(dirname "$0")/.." && pwd)}
work=$(mktemp -d /tmp/cmt-readme-XXXX)
echo "cloning $repo into $work; load $(cut -d' ' -f1-3 /proc/loadavg)"

fresh() {  # fresh <n>: a new clone and venv in $work/<n>, torch pre-installed; leaves the shell inside both
    git clone -q "$repo" "$work/$1/cmt" && python3 -m venv "$work/$1/venv" && source "$work/$1/venv/bin/activate" \
        && cd "$work/$1/cmt" && python -m pip install -q "torch==2.13.0" > "$work/$1/torch.log" 2>&1 \
        && echo "clone $1 at $(git rev-parse --short HEAD)"
}

fresh 1 || exit 1
t0=$(date +%s)
(pip install -e . && cmt pipeline configs/digits.toml) > "$work/1/command.log" 2>&1
rc1=$?
echo "command 1: pip install -e . && cmt pipeline configs/digits.toml -> exit $rc1 in $(( $(date +%s) - t0 )) s;" \
     "load $(cut -d' ' -f1-3 /proc/loadavg)"
grep -a "done in" "$work/1/command.log"
sed -n '/^| generator/,/^Digits FD/p' runs/digits/report.md
deactivate

fresh 2 || exit 1
t0=$(date +%s)
(pip install -e ".[test]" && pytest -q) > "$work/2/command.log" 2>&1
rc2=$?
echo "command 2: pip install -e \".[test]\" && pytest -q -> exit $rc2 in $(( $(date +%s) - t0 )) s;" \
     "load $(cut -d' ' -f1-3 /proc/loadavg)"
tail -n 1 "$work/2/command.log"
deactivate
echo "logs: $work/{1,2}/command.log"
exit $(( rc1 || rc2 ))
