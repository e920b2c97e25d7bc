"""Offline vs online mid-training: step time of `cmt mid-train` on a stored trajectory dataset against the
reference's online scheme, where every step first runs the teacher's solver (DPM-Solver++(3), 16 NFE) on fresh
noise for its trajectories. Same teacher, student, batch and loop; measured in one run, alternating, median
of --repeats. Also reports the offline run's share of step time spent waiting for data (the loop's data_wait).

    python benchmarks/midtrain.py                      # digits-sized UNet (2 M parameters), 8 trajectories x 16
    python benchmarks/midtrain.py --teacher builtin --steps 60 --json docs/midtrain-bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from itertools import count
from pathlib import Path

import torch

from cmt_pipeline.config import GenerateConfig, MidTrainConfig
from cmt_pipeline.generation import generate
from cmt_pipeline.priors import draw_priors
from cmt_pipeline.objectives import from_config
from cmt_pipeline.objectives.cmt import CMTLoss
from cmt_pipeline.solvers import get_solver, make_grid
from cmt_pipeline.training.trajectories import trajectory_source
from cmt_pipeline.teachers import load_teacher
from cmt_pipeline.training.loop import train
from cmt_pipeline.training.midtrain import build_student

from generation import emit, teacher_spec  # benchmarks/generation.py


class OnlineSource:
    """The reference scheme: batch k's trajectories are solved by the teacher when the batch is drawn."""

    def __init__(self, teacher, batch_size: int, seed: int = 0, steps: int = 16):
        self.teacher, self.batch_size, self.seed = teacher, batch_size, seed
        self.solve, self.sigmas = get_solver("dpm3"), make_grid("logsnr", steps)

    def batches(self, start: int, rank: int = 0, world: int = 1):
        for step in count(start + 1):
            idx = range(step * self.batch_size, (step + 1) * self.batch_size)
            prior, _ = draw_priors(self.seed, idx, self.teacher.shape, 0, "none")
            states = self.solve(self.teacher, torch.from_numpy(prior) * float(self.sigmas[0]), self.sigmas,
                                return_intermediates=True)
            yield {"traj": states[:-1].transpose(0, 1), "x0": states[-1],
                   "labels": torch.full((self.batch_size,), -1)}


def timed_run(source, teacher_path, cfg: MidTrainConfig, sigmas) -> tuple[float, float, float, float]:
    """(seconds per step after a warm-up, data-wait share, total seconds, data-wait share over the whole run,
    warm-up included) of one training run."""
    teacher = load_teacher(teacher_path)
    student = build_student(cfg, teacher, teacher.shape)
    t0 = time.perf_counter()
    train(student, from_config(CMTLoss, cfg, sigmas=sigmas), source, cfg, kind="bench", progress=False)
    total = time.perf_counter() - t0
    log = [json.loads(line) for line in (Path(cfg.out) / "log.jsonl").read_text().splitlines()]
    warm = [r for r in log if r["step"] > cfg.log_every]  # skip the first interval (warm-up)
    per_step = statistics.median(1 / r["steps_per_s"] for r in warm)
    wait = statistics.median(r["data_wait"] for r in warm)
    seconds = [(r["step"] - before) / r["steps_per_s"] for r, before in zip(log, [0] + [r["step"] for r in log])]
    return per_step, wait, total, sum(r["data_wait"] * s for r, s in zip(log, seconds)) / sum(seconds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="unet", help="unet (default: random digits-sized UNet), builtin, or a folder")
    ap.add_argument("--trajectories", type=int, default=2048, help="stored trajectories for the offline run")
    ap.add_argument("--batch-size", type=int, default=8, help="trajectories per step (x 16 points)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="cmt-bench-"))
    try:
        spec = teacher_spec(args.teacher, tmp)
        store = tmp / "store"
        generate(GenerateConfig(teacher=spec, num_samples=args.trajectories, out=str(store), device="cpu"),
                 progress=False)
        offline_src, info = trajectory_source(store, args.batch_size, seed=0)
        sigmas = torch.tensor(info["sigmas"], dtype=torch.float64)
        online_src = OnlineSource(load_teacher(spec), args.batch_size)
        res = {"offline": [], "online": []}
        for r in range(args.repeats):
            for name, src in (("offline", offline_src), ("online", online_src)):
                cfg = MidTrainConfig(out=str(tmp / f"{name}-{r}"), steps=args.steps, batch_size=args.batch_size,
                                     init="teacher", holdout=0, log_every=5, checkpoint_every=10**9,
                                     sample_every=0, tensorboard=False, device="cpu")
                res[name].append(timed_run(src, spec, cfg, sigmas))
        off = statistics.median(x[0] for x in res["offline"])
        on = statistics.median(x[0] for x in res["online"])
        report = {"teacher": args.teacher, "batch_trajectories": args.batch_size, "points_per_step": args.batch_size * 16,
                  "steps": args.steps, "threads": args.threads,
                  "offline_s_per_step": off, "online_s_per_step": on, "online_over_offline": on / off,
                  "offline_data_wait": statistics.median(x[1] for x in res["offline"]),
                  "load_average": os.getloadavg()[0]}
        emit(report, args.json)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
