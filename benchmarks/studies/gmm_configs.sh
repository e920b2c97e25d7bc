#!/bin/bash
# Does configs/gmm-post.toml's ECT lower the error of configs/gmm-mid.toml's student, and which timestep scale
# and post-training recipe does that need? (docs/results.md, "ECT post-training from a CMT student".)
#     OMP_NUM_THREADS=1 bash benchmarks/studies/gmm_configs.sh runs/gmm-configs [TIME_SCALE ...]
# For each timestep scale (default: 1 1000) it mid-trains configs/gmm-mid.toml's random-init student on one shared
# store of exact mixture trajectories, then post-trains it with three recipes on training seeds 0-2:
#   old: the recipe shipped until 2026-12-02 (l2, q 256, lr 1e-3 decaying linearly, EMA 0.99);
#   ref: the reference's (unsquared norm, q 4096, lr 1e-4 constant) with 80 warm-up steps, EMA 0.99;
#   ref999: ref with EMA 0.999, configs/gmm-post.toml as shipped.
# Finished runs are kept; prints each run's 1-step flow-map MSE curve and its 1-/2-step sliced W2 at start and end.
set -u
OUT=${1:?usage: gmm_configs.sh OUT [TIME_SCALE ...]}
shift
SCALES=${*:-1 1000}
cd "$(dirname "$0")/../.."
mkdir -p "$OUT"
cmt generate-trajectories --config configs/gmm-mid.toml --out "$OUT/traj" --quiet || exit 1  # resumes; a no-op once complete
post() {  # post MID NAME SEED [options]
  mid=$1; name=$2; seed=$3; shift 3
  run="$mid-$name-$seed"
  if [ ! -f "$run/metrics.json" ]; then
    rm -rf "$run"
    cmt post-train --config configs/gmm-post.toml --init "$mid/model.ckpt" --seed "$seed" --out "$run" \
      --no-tensorboard "$@" > "$run.log" 2>&1 || { echo "$run failed: $run.log"; return; }
  fi
  python - "$run/eval.jsonl" "$(basename "$run")" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
a, b = rows[0], rows[-1]
print(f"{sys.argv[2]:24s}", " ".join(f"{r['step']}:{r['1step_flow_map_mse']:.4f}" for r in rows),
      f"| 1-step W2 {a['1step_sliced_w2']:.4f} -> {b['1step_sliced_w2']:.4f}",
      f"| 2-step W2 {a['2step_sliced_w2']:.4f} -> {b['2step_sliced_w2']:.4f}")
PY
}
for ts in $SCALES; do
  mid="$OUT/mid-ts$ts"
  [ -f "$mid/model.ckpt" ] || cmt mid-train --config configs/gmm-mid.toml --data "$OUT/traj" --out "$mid" \
    --time-scale "$ts" --quiet --no-tensorboard > "$mid.log" 2>&1 || { echo "$mid failed: $mid.log"; continue; }
  tail -1 "$mid/eval.jsonl"
  for seed in 0 1 2; do
    post "$mid" old "$seed" --distance l2 --q 256 --lr 1e-3 --lr-schedule linear --warmup-steps 0 --ema-decay 0.99
    post "$mid" ref "$seed" --ema-decay 0.99
    post "$mid" ref999 "$seed"
  done
done
