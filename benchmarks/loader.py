"""The mid-training data path on its own: trajectory points per second that the loader delivers to the training
process (steady state, after warm-up), beside the points per second a CPU mid-training step consumes.

A point is one stored state of a trajectory (K per trajectory: what a `cmt mid-train` cm step with
--points-per-traj 0 trains on). The loader is trajectory_source's: an in-memory store's batches gathered in the
training process (--workers 0) or in worker processes; with --device cuda the batches are also copied to the GPU
one ahead (data.device_batches) and the clock includes that.

    python benchmarks/loader.py --store STORE [--batch-size 8 256] [--workers 0 1 2] [--train-steps 12]
    python benchmarks/loader.py --make-cifar STORE [--num-samples 1024]   # a 3x32x32 store of 16-point trajectories
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cmt_pipeline.config import GenerateConfig, MidTrainConfig
from cmt_pipeline.generation import generate
from cmt_pipeline.stores import open_store
from cmt_pipeline.teachers import EDMDenoiser, Precond, build_unet
from cmt_pipeline.training.data import device_batches
from cmt_pipeline.training.midtrain import mid_train
from cmt_pipeline.training.trajectories import trajectory_source
from cmt_pipeline.seeding import seeded


def make_cifar(out: Path, num_samples: int) -> None:
    """A CIFAR-sized store written by the project's own generator: a random-weight EDM UNet (channels 32/64) on
    3x32x32, DPM-Solver++(3) x 16, float16 states; the teacher folder is kept beside it for mid-training."""
    teacher = out.with_name(out.name + "-teacher")
    with seeded(0):
        EDMDenoiser(build_unet((3, 32, 32), (32, 64), 1), Precond()).save(teacher)
    generate(GenerateConfig(teacher=str(teacher), num_samples=num_samples, out=str(out), device="cpu",
                            batch_size=128, shard_size=512), progress=False)


def loader_rate(store, batch_size: int, workers: int, device: str, seconds: float, warmup: int) -> float:
    """Points per second the loader delivers (a batch counts when the training process holds it)."""
    source, info = trajectory_source(store, batch_size, seed=0, holdout=0, workers=workers)
    k = len(info["sigmas"]) - 1
    stream = device_batches(source.batches(0), torch.device(device))
    for _ in range(warmup):
        next(stream)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += len(next(stream)["traj"])
    if device == "cuda":
        torch.cuda.synchronize()
    return n * k / (time.perf_counter() - t0)


def train_rate(store, steps: int, batch_size: int) -> float:
    """Points per second a CPU `cmt mid-train` (cm, defaults, init from the store's teacher) consumes: the median
    samples/s over its logging intervals after the first, times K."""
    with tempfile.TemporaryDirectory(prefix="cmt-loader-") as tmp:
        cfg = MidTrainConfig(data=str(store), out=tmp, steps=steps, batch_size=batch_size, holdout=0,
                             log_every=max(1, steps // 4), sample_every=0, checkpoint_every=10**9,
                             tensorboard=False, device="cpu")
        mid_train(cfg, progress=False)
        rows = [json.loads(line) for line in (Path(tmp) / "log.jsonl").read_text().splitlines()]
    k = open_store(store).plan["num_states"]
    return statistics.median(r["samples_per_s"] for r in rows[1:]) * k


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store")
    ap.add_argument("--make-cifar", metavar="STORE")
    ap.add_argument("--num-samples", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, nargs="+", default=[8, 256])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=int, default=20, help="batches before the clock starts")
    ap.add_argument("--train-steps", type=int, default=12, help="CPU mid-training steps timed (0 = skip)")
    args = ap.parse_args()
    if args.make_cifar:
        make_cifar(Path(args.make_cifar), args.num_samples)
        return
    plan = open_store(args.store).plan
    report = {"store": args.store, "shape": plan["shape"], "points_per_trajectory": plan["num_states"],
              "dtype": plan["dtype"], "num_samples": plan["num_samples"], "device": args.device,
              "load_average_start": os.getloadavg()[0], "loader_points_per_s": {}}
    for b in args.batch_size:
        for w in args.workers:
            rate = loader_rate(args.store, b, w, args.device, args.seconds, args.warmup)
            report["loader_points_per_s"][f"batch {b}, workers {w}"] = round(rate)
            print(f"loader  batch {b:4d}  workers {w}: {rate:12,.0f} points/s", flush=True)
    if args.train_steps:
        rate = train_rate(args.store, args.train_steps, 8)
        report["cpu_midtrain_points_per_s"] = round(rate, 1)
        print(f"CPU mid-train step (batch 8, cm): {rate:,.1f} points/s", flush=True)
    report["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
