"""Trajectory stores as training data, behind the training loop's data seam (data.py); training sits above stores/.

`trajectory_source(path, batch_size, seed, holdout)` picks by format (from the manifest):
- Zarr, map-style, shuffled by sample: batch k is a seeded permutation's k-th slice, so a resumed run and any
  number of processes see the same global batches. Held in memory when it fits (`cache`), else each batch
  reads its samples from the store (one inner chunk per sample).
- WebDataset, streaming: shards split by node (process) and by DataLoader worker, seeded shuffling of
  shards and of samples in a buffer, and resampled epochs (shards drawn with replacement, forever).
The last `holdout` trajectories (by global index) are never trained on; evaluation uses them.
Every batch holds traj (B, K, C, H, W), x0 (B, C, H, W) in the stored dtype and labels (B,) int64.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

import numpy as np
import torch

from ..stores import open_store, read_all
from ..stores.wds_store import shard_path
from ..utils import CMTError, check_memory, sample_seed
from .data import TensorSource

FIELDS = ("traj", "x0", "labels")


def sample_bytes(plan: dict) -> int:
    """Bytes of one stored trajectory: its K states and x0."""
    return (plan["num_states"] + 1) * int(np.prod(plan["shape"])) * np.dtype(plan["dtype"]).itemsize


def dataset_info(path, plan: dict, holdout: int) -> dict:
    """What a checkpoint records about its training data: where, how much, and a fingerprint of the exact bytes."""
    digests = json.dumps([s["files"] for s in plan["shards"]], sort_keys=True)
    return {"store": str(path), "format": plan["format"], "num_samples": plan["num_samples"],
            "holdout": holdout, "sigmas": plan["sigmas"], "shape": plan["shape"],
            "teacher_fingerprint": plan["teacher"]["fingerprint"],
            "fingerprint": hashlib.sha256(digests.encode()).hexdigest()}


class ZarrColumn:
    """The first n samples of a zarr array, read lazily by a tensor of indices (any order, repeats allowed)."""

    def __init__(self, array, n: int):
        self.array, self.n = array, n

    def __len__(self):
        return self.n

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        uniq, inverse = np.unique(idx.numpy(), return_inverse=True)
        return torch.from_numpy(np.ascontiguousarray(self.array.get_orthogonal_selection(uniq)[inverse]))


class WdsSource:
    """Streaming batches from WebDataset shards (re-iterable; each process iterates its own split)."""

    def __init__(self, root: Path, plan: dict, batch_size: int, seed: int, holdout: int, workers: int = 0,
                 buffer: int = 1000):
        self.urls = [str(shard_path(root, k)) for k in range(len(plan["shards"]))]
        self.limit = plan["num_samples"] - holdout
        self.batch_size, self.seed, self.workers, self.buffer = batch_size, seed, workers, buffer
        check_memory("--batch-size", batch_size, sample_bytes(plan), "one batch of trajectories")

    def pipeline(self, per_process: int, seed: int):
        import webdataset as wds

        def decode(sample):
            out = {name: np.load(io.BytesIO(sample[ext]), allow_pickle=False)
                   for name, ext in (("traj", "traj.npy"), ("x0", "x0.npy"), ("labels", "label.npy"))}
            out["index"] = int(sample["__key__"])
            return out

        return wds.DataPipeline(
            wds.ResampledShards(self.urls, seed=seed, deterministic=True),
            wds.split_by_worker,
            wds.tarfile_to_samples(),
            wds.map(decode),
            wds.select(lambda s: s["index"] < self.limit),
            wds.shuffle(self.buffer, rng=random.Random(seed)),
            wds.batched(per_process, collation_fn=lambda ss: {k: torch.from_numpy(np.stack([s[k] for s in ss]))
                                                              for k in FIELDS}),
        )

    def batches(self, start: int, rank: int = 0, world: int = 1):
        """Resampled shards draw per (seed, rank), so processes read different data; resume replays the stream."""
        if self.batch_size % world:
            raise CMTError(f"batch size {self.batch_size} does not split over {world} processes")
        pipeline = self.pipeline(self.batch_size // world, sample_seed(self.seed, rank))
        loader = torch.utils.data.DataLoader(pipeline, batch_size=None,
                                             num_workers=self.workers)
        stream = iter(loader)
        for _ in range(start):
            next(stream)
        yield from stream


def trajectory_source(path, batch_size: int, seed: int = 0, holdout: int = 0, cache: bool | None = None,
                      require_complete: bool = True, max_cache_bytes: int = 8 << 30):
    """(source, info) for the store at `path`; see the module doc."""
    reader = open_store(path, require_complete)
    plan = reader.plan
    n = plan["num_samples"] - holdout
    if holdout < 0 or n < 1:
        raise CMTError(f"--holdout {holdout} leaves no training trajectories out of {plan['num_samples']}; "
                       "use a smaller holdout")
    info = dataset_info(path, plan, holdout)
    if plan["format"] == "wds":
        return WdsSource(Path(path), plan, batch_size, seed, holdout), info
    if cache is None:
        cache = sample_bytes(plan) * n <= max_cache_bytes
    if cache:
        arrays = read_all(path, require_complete)
        tensors = {k: torch.from_numpy(arrays[k][:n]) for k in FIELDS}
    else:
        tensors = {k: ZarrColumn(reader.arrays[k], n) for k in FIELDS}
    return TensorSource(tensors, batch_size, seed), info
