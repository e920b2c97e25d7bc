"""bf16 autocast against float32 on this CPU, for the networks configs/digits.toml runs: the built-in teacher's
forward at evaluation's batch (250, no gradient) and a training step of its student at mid-training's (64 points,
forward and backward), one thread, the two precisions interleaved; then what devices.cpu_bf16_fast decides here.

    python benchmarks/bf16_speed.py [--repeats 5]

Prints the CPU's name and bf16 capabilities, the best time of each, and float32 / bf16 (above 1: bf16 is faster).
The results of several machines are in docs/performance.md, "bf16 on a CPU": why bf16 is taken on some CPUs only.
"""

from __future__ import annotations

import argparse
import time

import torch

from cmt_pipeline.devices import cpu_bf16_fast
from cmt_pipeline.models import consistency_student
from cmt_pipeline.teachers import load_teacher


def timed(fn, precision: str, n: int) -> float:
    """Seconds per call of fn, under bf16 autocast or not."""
    t0 = time.perf_counter()
    for _ in range(n):
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            fn()
    return (time.perf_counter() - t0) / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calls", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    caps = getattr(torch.cpu, "get_capabilities", dict)()
    print(f"cpu {caps.get('cpu_name', '?')}: avx512_bf16 {caps.get('avx512_bf16')}, amx_bf16 {caps.get('amx_bf16')}; "
          f"torch {torch.__version__}")
    gen = torch.Generator().manual_seed(0)
    teacher = load_teacher("builtin")
    x, sigma = torch.randn(250, 1, 8, 8, generator=gen), torch.full((250,), 1.0)
    student = consistency_student(load_teacher("builtin")).train()
    xb, sb = torch.randn(64, 1, 8, 8, generator=gen), torch.rand(64, generator=gen) + 0.1

    def forward():
        with torch.no_grad():
            teacher(x, sigma)

    def train_step():
        (student(xb, sb) - xb).square().mean().backward()

    for name, fn in (("forward, batch 250", forward), ("train step, batch 64", train_step)):
        for p in ("no", "bf16"):
            timed(fn, p, 1)  # warm-up: oneDNN builds its kernels on the first call
        runs = [(p, timed(fn, p, args.calls)) for _ in range(args.repeats) for p in ("no", "bf16")]
        best = {p: min(t for q, t in runs if q == p) for p in ("no", "bf16")}
        print(f"{name}: float32 {best['no'] * 1e3:.1f} ms, bf16 {best['bf16'] * 1e3:.1f} ms, "
              f"float32 / bf16 {best['no'] / best['bf16']:.2f}")
    print(f"devices.cpu_bf16_fast() here: {cpu_bf16_fast()} (mixed_precision bf16 runs in "
          f"{'bf16' if cpu_bf16_fast() else 'float32'})")


if __name__ == "__main__":
    main()
