"""`cmt generate-trajectories` against a naive loop over the same samples: whole processes, paired, alternating.

The naive loop (`--naive`, run as its own process) loads the same teacher, draws the same per-sample priors, runs
the same solver and sigma grid batch by batch with torch's intra-op threads, and np.save's each batch's float16
states and x0: what a user would write without cmt. Each pair runs both commands back to back, in alternating
order; reported: each side's wall seconds and the median of the pairs' ratios cmt / naive (goal <= 1.00), with
the load average before each pair.

    python benchmarks/generation_vs_naive.py --teacher builtin --num-samples 1024 --batch-size 256 --shard-size 256
    python benchmarks/generation_vs_naive.py --teacher dit --num-samples 1024 --batch-size 128 --shard-size 128
    PYTHONPATH=/tmp/old python benchmarks/generation_vs_naive.py ...   # another checkout's cmt (the naive side
                                                                       # runs that checkout's solver too)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def naive(args) -> None:
    import numpy as np
    import torch

    from cmt_pipeline.config import GenerateConfig
    from cmt_pipeline.priors import draw_priors
    from cmt_pipeline.solvers import get_solver, make_grid
    from cmt_pipeline.teachers import load_teacher

    torch.set_num_threads(args.threads)
    cfg = GenerateConfig()
    teacher = load_teacher(args.teacher, "cpu")
    sigmas = make_grid(cfg.grid, cfg.steps, cfg.sigma_max, cfg.sigma_min)
    solver = get_solver(cfg.solver)
    out = Path(args.out)
    out.mkdir(parents=True)
    with torch.no_grad():
        for b in range(0, args.num_samples, args.batch_size):
            index = np.arange(b, min(b + args.batch_size, args.num_samples))
            noise, labels = draw_priors(cfg.seed, index, teacher.shape, teacher.num_classes, cfg.class_labels)
            lab = torch.from_numpy(labels) if teacher.num_classes else None
            states = solver(teacher, torch.from_numpy(noise) * float(sigmas[0]), sigmas, lab, return_intermediates=True)
            np.save(out / f"{b:09d}-traj.npy", states[:-1].transpose(0, 1).numpy().astype(np.float16))
            np.save(out / f"{b:09d}-x0.npy", states[-1].numpy().astype(np.float16))
            np.save(out / f"{b:09d}-prior.npy", noise)


def timed(cmd: list[str]) -> float:
    """Wall seconds of a command, with OpenMP's waiting threads sleeping (OMP_WAIT_POLICY=PASSIVE, what the CLI
    chooses on a busy machine) on both sides: spinning ones would make one side pay for the machine's load, not
    for its loop."""
    import cmt_pipeline  # `-m cli` runs the checkout this imports (PYTHONPATH's, else this one)

    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=Path(cmt_pipeline.__file__).parent.parent, capture_output=True,
                   env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="builtin", help="builtin, dit (benchmarks/generation.py's stand-in), a folder")
    ap.add_argument("--num-samples", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--naive", action="store_true", help="run the naive loop itself (into --out)")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.naive:
        return naive(args)
    with tempfile.TemporaryDirectory(prefix="cmt-naive-") as tmp:
        sys.path.insert(0, str(HERE))
        from generation import teacher_spec

        spec = teacher_spec(args.teacher, Path(tmp))
        common = ["--teacher", spec, "--num-samples", str(args.num_samples), "--batch-size", str(args.batch_size)]
        rows = []
        for r in range(args.pairs):
            cmt = [sys.executable, "-m", "cli", "generate-trajectories", *common, "--shard-size",
                   str(args.shard_size), "--num-threads", str(args.threads), "--device", "cpu", "--quiet",
                   "--out", f"{tmp}/cmt-{r}"]
            loop = [sys.executable, str(HERE / "generation_vs_naive.py"), "--naive", *common, "--threads",
                    str(args.threads), "--out", f"{tmp}/naive-{r}"]
            load = os.getloadavg()[0]
            first, second = (cmt, loop) if r % 2 == 0 else (loop, cmt)
            t = {id(first): timed(first), id(second): timed(second)}
            rows.append((t[id(cmt)], t[id(loop)], load))
            print(f"pair {r}: cmt {rows[-1][0]:.2f} s, naive {rows[-1][1]:.2f} s, ratio "
                  f"{rows[-1][0] / rows[-1][1]:.3f}, load average {load:.1f}", flush=True)
    print(f"{args.teacher}, {args.num_samples} samples, batch {args.batch_size}, shard {args.shard_size}, "
          f"{args.threads} threads: median cmt {statistics.median(r[0] for r in rows):.2f} s, naive "
          f"{statistics.median(r[1] for r in rows):.2f} s, median ratio "
          f"{statistics.median(r[0] / r[1] for r in rows):.3f}")


if __name__ == "__main__":
    main()
