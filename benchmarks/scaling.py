"""Generation across workers on one machine: W worker processes (one thread each) against 1 worker, on the same
fixed job. Pass: W = 2 workers finish in at most 0.6x the wall time of 1 worker (issue 6). The single worker is
timed both with W threads (its whole machine) and with 1 thread, and the ratio is taken against the faster.

Both sides are whole `cmt generate-trajectories` commands, timed from launch until the last process exits
(imports, teacher loading and the manifest included: what a user waits for). They run interleaved, best of
--repeats, and each parallel dataset is compared byte for byte with the single-worker one. The machine is
shared, so the load average before and after is printed next to the numbers.

    python benchmarks/scaling.py                          # digits-sized EDM UNet, N=1536, W = CPU count
    python benchmarks/scaling.py --workers 2 --num-samples 3072 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation import teacher_spec  # noqa: E402  (the digits-sized UNet of benchmarks/generation.py)

LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "OMP_NUM_THREADS")


def command(args, spec: str, out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "cli", "generate-trajectories", "--quiet", "--teacher", spec, "--device", "cpu",
            "--num-samples", str(args.num_samples), "--shard-size", str(args.shard_size),
            "--batch-size", str(args.batch_size), "--out", str(out), *extra]


def run(commands: list[list[str]]) -> tuple[float, list[str]]:
    """Start all commands at once; wall seconds until the last one exits, and their outputs."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV and not k.startswith("SLURM_")}
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              cwd=Path(__file__).resolve().parent.parent) for c in commands]
    outputs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - t0
    for p, o in zip(procs, outputs):
        if p.returncode:
            raise SystemExit(f"generation failed:\n{o}")
    return wall, outputs


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="[default: the CPU count]")
    ap.add_argument("--teacher", default="unet", help="unet (digits-sized EDM UNet, default), builtin, gmm:..., "
                    "or a folder")
    ap.add_argument("--num-samples", type=int, default=1536)
    ap.add_argument("--shard-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--target", type=float, default=0.6, help="pass when parallel / single wall time <= this")
    args = ap.parse_args()
    w = args.workers
    tmp = Path(tempfile.mkdtemp(prefix="cmt-scaling-"))
    try:
        spec = teacher_spec(args.teacher, tmp)
        load_before = os.getloadavg()
        runs = {f"1 worker, {w} threads": lambda out: [command(args, spec, out, "--num-threads", str(w))],
                "1 worker, 1 thread": lambda out: [command(args, spec, out, "--num-threads", "1")],
                f"{w} workers, 1 thread each": lambda out: [
                    command(args, spec, out, "--worker-index", str(i), "--num-workers", str(w), "--num-threads", "1")
                    for i in range(w)]}
        names = list(runs)
        wall = {name: [] for name in runs}
        loop = {}
        for r in range(args.repeats):
            trees = []
            for j, (name, make) in enumerate(runs.items()):
                out = tmp / f"{r}-{j}"
                t, o = run(make(out))
                wall[name].append(round(t, 2))
                loop[name] = [float(x) for x in re.findall(r"([\d.]+) s \(", "".join(o))]
                trees.append(tree(out))
                shutil.rmtree(out)
            for name, t in zip(names[1:], trees[1:]):
                differing = sorted(k for k in set(t) | set(trees[0]) if t.get(k) != trees[0].get(k))
                if differing:
                    raise SystemExit(f"{name!r} wrote a dataset that differs from {names[0]!r} in {differing[:10]}")
        best_single = min(min(wall[names[0]]), min(wall[names[1]]))
        ratio = min(wall[names[2]]) / best_single
        report = {
            "workers": w, "cpus": len(os.sched_getaffinity(0)), "teacher": args.teacher,
            "num_samples": args.num_samples, "shard_size": args.shard_size, "batch_size": args.batch_size,
            "wall_s": wall, "generation_loop_s_last_repeat": loop, "ratio_vs_best_single": round(ratio, 3),
            "target": args.target,
            "pass": ratio <= args.target, "datasets_identical": True,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        }
        print(json.dumps(report, indent=2))
        print(f"\n| run | wall s (best of {args.repeats}) | generation loop s (per process, last repeat) |")
        print("|---|---|---|")
        for name in names:
            print(f"| {name} | {min(wall[name]):.1f} | {', '.join(f'{x:.1f}' for x in loop[name])} |")
        for name in names[:2]:
            print(f"| {names[2]} / {name} | {min(wall[names[2]]) / min(wall[name]):.2f} | |")
        print(f"| verdict, against the faster single worker | {ratio:.2f}: "
              f"{'PASS' if ratio <= args.target else 'FAIL'} (target <= {args.target}) | |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
