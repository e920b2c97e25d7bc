#!/usr/bin/env bash
# Every stage once on a GPU, then the generation overhead there. From the repo root of a machine with CUDA:
#   bash benchmarks/gpu_check.sh OUTDIR            (DEV=cpu SMALL=1 for a quick dry run anywhere)
#   OLD=CHECKOUT bash benchmarks/gpu_check.sh OUTDIR  (or BASE=COMMIT in a git clone: also the generation overhead
#                                                   of that older code, alternating with this one, same machine)
# Each stage's log goes to OUTDIR/<stage>.log; the summary (exit code and seconds per stage) to stdout.
set -uo pipefail
out=${1:-gpu-check}; dev=${DEV:-cuda}; small=${SMALL:-0}
mkdir -p "$out"; w=$(mktemp -d)
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
n() { if [ "$small" = 1 ]; then echo "$2"; else echo "$1"; fi; }  # full size, or the dry run's
cmt() { python3 -m cli "$@"; }
failed=0
step() {
  local name=$1; shift; local t0=$SECONDS
  "$@" > "$out/$name.log" 2>&1; local rc=$?
  [ $rc -eq 0 ] || failed=$((failed + 1))
  echo "== $name: exit $rc, $((SECONDS - t0)) s"; tail -n 3 "$out/$name.log"
}
python3 -c "import torch, diffusers, zarr, accelerate; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
'zarr', zarr.__version__, 'accelerate', accelerate.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"
N=$(n 8192 512)
step generate cmt generate-trajectories --teacher builtin --num-samples "$N" --batch-size 1024 --shard-size 1024 \
  --device "$dev" --out "$w/traj" --quiet
step generate-2-workers bash -c "for i in 0 1; do python3 -m cli generate-trajectories --teacher builtin --num-samples $N \
  --batch-size 1024 --shard-size 1024 --device $dev --out $w/traj2 --worker-index \$i --num-workers 2 --quiet & done; wait"
step same-bytes-1-vs-2-workers diff -r "$w/traj" "$w/traj2"
step verify cmt verify "$w/traj"
step mid-train-cm cmt mid-train --data "$w/traj" --out "$w/mid" --steps "$(n 600 20)" --device auto --quiet
step mid-train-mf cmt mid-train --data "$w/traj" --flavour mf --out "$w/midmf" --steps "$(n 200 10)" --device auto --quiet
step post-train-ect cmt post-train --init "$w/mid/model.ckpt" --objective ect --data digits --out "$w/post" \
  --steps "$(n 300 10)" --device auto --quiet
step post-train-meanflow cmt post-train --init "$w/midmf/model.ckpt" --objective meanflow --data digits \
  --out "$w/postmf" --steps "$(n 100 5)" --device auto --quiet
step sample cmt sample --ckpt "$w/post/model.ckpt" --steps 2 --num-samples 64 --device "$dev" --out "$out/post-2step.png"
step evaluate-student cmt evaluate --student "$w/post/model.ckpt" --steps 2 --store "$w/traj" --device "$dev" \
  --out "$w/eval-post"
step evaluate-teacher cmt evaluate --device "$dev" --out "$w/eval-teacher"
step export cmt export --ckpt "$w/postmf/model.ckpt" --out "$w/export"
step export-loads-with-diffusers python3 -c "
import torch; from diffusers import DiffusionPipeline
p = DiffusionPipeline.from_pretrained('$w/export', trust_remote_code=True).to('$dev')
x = p(batch_size=8, steps=2, output_type='pt', generator=torch.Generator('$dev').manual_seed(0)).images
print(type(p).__name__, tuple(x.shape), x.device, float(x.abs().max()))"
step pipeline-small cmt pipeline benchmarks/pipeline-small.toml --out "$w/pipe" --quiet
cp "$w/pipe/report.md" "$out/pipeline-small-report.md" 2>/dev/null
# Generation overhead (benchmarks/generation.py: generate vs bare forwards; setup / steady / tail seconds) for the
# digits UNet, the DiT stand-in and a DDPM++-sized CIFAR-10 UNet at batch 512; with OLD or BASE, the older code's
# run follows each of this code's, on the same warm machine (the benchmark script is this checkout's).
old=${OLD:-}
if [ -z "$old" ] && [ -n "${BASE:-}" ]; then old="$w/old"; mkdir -p "$old"; git archive "$BASE" | tar -x -C "$old"; fi
overhead() {
  local name=$1; shift
  step "overhead-$name" python3 benchmarks/generation.py --device "$dev" "$@" --json "$out/overhead-$name.json"
  [ -z "$old" ] || step "overhead-$name-old" env PYTHONPATH="$old" python3 benchmarks/generation.py --device "$dev" "$@" \
    --json "$out/overhead-$name-old.json"
}
overhead unet --num-samples "$(n 8192 512)" --batch-size 1024 --shard-size 4096 --repeats "$(n 3 1)"
overhead dit --teacher dit --num-samples "$(n 4096 64)" --batch-size 512 --shard-size 1024 --repeats "$(n 3 1)"
overhead cifar --teacher cifar --num-samples "$(n 4096 16)" --batch-size "$(n 512 8)" --shard-size "$(n 1024 8)" \
  --steps "$(n 16 2)" --repeats "$(n 2 1)"
# The same with the teacher's forward replayed as a CUDA graph (--cuda-graphs; this code only), after the tests that
# its stores are byte-identical to eager ones
step graphs-tests python3 -m pytest -q -p no:cacheprovider tests/test_graphs.py tests/test_syncs.py
if [ "${dev#cuda}" != "$dev" ]; then  # graphs need CUDA: a dry run on a CPU skips these two
step overhead-dit-graphs python3 benchmarks/generation.py --device "$dev" --teacher dit --num-samples "$(n 4096 64)" \
  --batch-size 512 --shard-size 1024 --repeats "$(n 3 1)" --cuda-graphs --json "$out/overhead-dit-graphs.json"
step overhead-unet-graphs python3 benchmarks/generation.py --device "$dev" --num-samples "$(n 8192 512)" \
  --batch-size 1024 --shard-size 4096 --repeats "$(n 3 1)" --cuda-graphs --json "$out/overhead-unet-graphs.json"
fi
python3 - "$out" <<'PY'
import json, pathlib, sys
print(f"{'overhead':18s} {'generate s':>10s} {'bare s':>8s} {'ratio':>6s} {'setup s':>8s} {'steady s':>9s} {'tail s':>7s}")
for f in sorted(pathlib.Path(sys.argv[1]).glob("overhead-*.json")):
    r = json.loads(f.read_text())
    print(f"{f.stem[9:]:18s} {r['generate_s']:10.2f} {r['bare_forward_s']:8.2f} {r['ratio']:6.2f} "
          f"{r.get('setup_s', float('nan')):8.2f} {r.get('steady_s', float('nan')):9.2f} {r.get('tail_s', float('nan')):7.2f}")
PY
echo "$failed stage(s) failed"
rm -rf "$w"
