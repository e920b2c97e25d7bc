#!/bin/bash
# ECT from the default pipeline's mid-trained student improves for ~450 steps, then collapses (docs/results.md,
# "ECT post-training from a CMT student"). Which one setting prevents it? Each run is configs/digits.toml's
# [post_train] for 900 steps with one option changed, evaluated every 150 steps (2000 samples, evaluation seed 1).
#     bash benchmarks/studies/ect_collapse.sh runs/digits/mid/model.ckpt runs/ect-collapse [RUN ...]
# RUN names a subset of the runs below (default: all). Finished runs are kept; prints each run's 1-/2-step digits
# FD curve.
set -u
INIT=${1:?usage: ect_collapse.sh MID_MODEL_CKPT OUT [RUN ...]}
OUT=${2:?usage: ect_collapse.sh MID_MODEL_CKPT OUT [RUN ...]}
shift 2
ONLY=" $* "
cd "$(dirname "$0")/../.."
mkdir -p "$OUT"
run() {
  name=$1; shift
  if [ "$ONLY" != "  " ] && [[ "$ONLY" != *" $name "* ]]; then return; fi
  if [ ! -f "$OUT/$name/metrics.json" ]; then
    rm -rf "${OUT:?}/$name"
    cmt post-train --config configs/digits.toml --init "$INIT" --steps 900 --eval-every 150 --eval-samples 2000 \
      --out "$OUT/$name" --no-tensorboard "$@" > "$OUT/$name.log" 2>&1 || { echo "$name failed: $OUT/$name.log"; return; }
  fi
  python - "$OUT/$name/eval.jsonl" "$name" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"{sys.argv[2]:12s}", "  ".join(f"{r['step']}: {r['1step_digits_fd']:.2f}/{r['2step_digits_fd']:.2f}" for r in rows))
PY
}
run base                          # configs/digits.toml as it is (lr 1e-5 constant after a 30-step warm-up)
run lr-linear --lr-schedule linear
run q256 --q 256
run ema999 --ema-decay 0.999
run huber-c001 --huber-c 0.01
