"""Mid-training from object storage vs a local folder: the loop's data-wait share (of step time) and seconds per
step, reading the same trajectory store (each format) from a local folder and from an S3 bucket, served by moto's
S3 server on 127.0.0.1 in its own process (tests/s3_server.py). Stores are read lazily (Zarr: by sample, read ahead on a thread;
WebDataset: shards streamed), as a store too large for memory is; also times generating into the bucket and
checking every shard (sha256 and sample indices: what each training process pays on its first read of a shard).

    python benchmarks/object_store.py                        # 1024 trajectories, 40 steps of 8 x 16 points
    python benchmarks/object_store.py --json docs/object-store-bench.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from cmt_pipeline.config import GenerateConfig, MidTrainConfig
from cmt_pipeline.generation import generate
from cmt_pipeline.stores import num_shards, open_store
from cmt_pipeline.stores.trust import TRUSTED, require_trusted
from cmt_pipeline.training.trajectories import trajectory_source

from generation import emit  # benchmarks/generation.py
from midtrain import timed_run  # benchmarks/midtrain.py

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from s3_server import local_s3  # noqa: E402

TEACHER = "gmm:gmm8x8"  # exact and fast to solve; the student is a random UNet (--init random, --channels)


def read_time(source, batches: int = 30) -> float:
    """Seconds per batch of reading alone, without training: how fast the store delivers."""
    stream = source.batches(0)
    next(stream)  # opening the store and the first shard
    t0 = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return (time.perf_counter() - t0) / batches


def check_time(root) -> float:
    """Seconds to check every shard once (sha256 and sample indices, stores/trust.py): what a training process
    pays over its first reads of each shard."""
    TRUSTED.clear()
    reader = open_store(root)
    t0 = time.perf_counter()
    for k in range(num_shards(reader.plan)):
        require_trusted(reader, k)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trajectories", type=int, default=1024)
    ap.add_argument("--shard-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8, help="trajectories per step (x 16 points)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--channels", default="16,32", help="student UNet widths: small, so that a step is short and "
                    "the data wait weighs the most")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="cmt-bench-"))
    channels = [int(c) for c in args.channels.split(",")]
    report = {"trajectories": args.trajectories, "shard_size": args.shard_size, "steps": args.steps,
              "batch_trajectories": args.batch_size, "student_channels": channels, "threads": args.threads}
    try:
        with local_s3(process=True) as env:
            os.environ.update(env)
            for fmt in ("zarr", "wds"):
                roots = {"local": str(tmp / fmt), "s3": f"s3://cmt/bench/{fmt}"}
                for where, root in roots.items():
                    t0 = time.perf_counter()
                    generate(GenerateConfig(teacher=TEACHER, num_samples=args.trajectories, shard_size=args.shard_size,
                                            format=fmt, device="cpu", out=root), progress=False)
                    report[f"{fmt}_{where}_generate_s"] = time.perf_counter() - t0
                for where, root in roots.items():
                    report[f"{fmt}_{where}_check_s"] = check_time(root)
                    report[f"{fmt}_{where}_read_s_per_batch"] = read_time(trajectory_source(
                        root, args.batch_size, cache=False)[0])
                runs = {where: [] for where in roots}
                for r in range(args.repeats):
                    for where, root in roots.items():  # alternating, so both see the same machine load
                        TRUSTED.clear()  # each run checks the shards it reads, as a fresh process does
                        source, info = trajectory_source(root, args.batch_size, cache=False)
                        cfg = MidTrainConfig(out=str(tmp / f"run-{fmt}-{where}-{r}"), steps=args.steps,
                                             batch_size=args.batch_size, init="random", channels=channels,
                                             layers_per_block=1, holdout=0, log_every=5,
                                             checkpoint_every=10**9, sample_every=0, tensorboard=False, device="cpu")
                        runs[where].append(timed_run(source, TEACHER, cfg, torch.tensor(info["sigmas"])))
                for where, results in runs.items():
                    report[f"{fmt}_{where}_s_per_step"] = statistics.median(x[0] for x in results)
                    report[f"{fmt}_{where}_data_wait"] = statistics.median(x[1] for x in results)
                    report[f"{fmt}_{where}_data_wait_whole_run"] = statistics.median(x[3] for x in results)
        report["load_average"] = os.getloadavg()[0]
        emit(report, args.json)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
