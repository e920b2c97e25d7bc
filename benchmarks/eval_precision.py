"""Evaluation in bf16 autocast against float32: the same generator, seeds and noise sampled both ways (paired),
digits FD per seed, the samples' difference, and the sampling time.

    python benchmarks/eval_precision.py --generator teacher-best --seeds 1,2,3
    python benchmarks/eval_precision.py --generator RUN/post/model.ckpt:2 --seeds 1,2,3
--generator is `teacher-best` (the digits teacher, configs/digits.toml's reference sampler: DPM-Solver++(2M) x 16 on
the Karras grid) or a student's CKPT:STEPS. Prints one line per precision and seed, then per seed the change of FD
(bf16 - float32), the largest and the rms change of a sample, and the speed-up. A CPU without bf16 hardware emulates
it (slower than float32): the timing is this machine's.
"""

from __future__ import annotations

import argparse
import time

import torch

from cmt_pipeline.evaluation.run import digits_fd
from cmt_pipeline.sampling import StudentSampler, TeacherSampler, load_student, sample, student_sigmas
from cmt_pipeline.teachers import load_teacher


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", default="teacher-best")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--batch-size", type=int, default=250)
    args = ap.parse_args()
    cpu = torch.device("cpu")
    if args.generator == "teacher-best":
        sampler = TeacherSampler(load_teacher("builtin", cpu), "dpm2", 16, "karras")
    else:
        ckpt, steps = args.generator.rsplit(":", 1)
        sampler = StudentSampler(load_student(ckpt, cpu), student_sigmas(int(steps)))
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = {}
    for precision in ("no", "bf16"):
        for seed in seeds:
            t0 = time.perf_counter()
            x = sample(sampler, args.samples, seed, args.batch_size, cpu, precision=precision)[0]
            seconds = time.perf_counter() - t0
            fd = digits_fd(cpu).metrics(x, seed)["digits_fd"]
            runs[precision, seed] = fd, seconds, x
            print(f"{args.generator} {precision:4s} seed {seed}: FD {fd:.3f}, sampled in {seconds:.1f} s", flush=True)
    for seed in seeds:
        (fd32, s32, x32), (fd16, s16, x16) = runs["no", seed], runs["bf16", seed]
        gap = x16 - x32
        print(f"{args.generator} seed {seed}: FD change {fd16 - fd32:+.3f}, sample change max {gap.abs().max():.4f} "
              f"rms {gap.pow(2).mean().sqrt():.5f}, {s32 / s16:.2f}x the samples per second")


if __name__ == "__main__":
    main()
