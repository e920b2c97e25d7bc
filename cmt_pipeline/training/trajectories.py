"""Trajectory stores as training data, behind the training loop's data seam (data.py); training sits above stores/.

`trajectory_source(path, batch_size, seed, holdout)` picks by format (from the manifest):
- Zarr, map-style, shuffled by sample: batch k is a seeded permutation's k-th slice, so a resumed run and any
  number of processes see the same global batches. Held in memory when it fits (`cache`), its batches gathered
  in worker processes (data.Workers) when a GPU trains; else each batch reads its samples from the store (one
  inner chunk per sample), a few batches ahead on a thread (ReadAhead) so that the loop does not wait for object
  storage.
- WebDataset, streaming: shards split by node (process) and by DataLoader worker, seeded shuffling of
  shards and of samples in a buffer, and resampled epochs (shards drawn with replacement, forever). Shards
  are opened through the store's Location: local files, or objects streamed from any fsspec URL.
The last `holdout` trajectories (by global index) are never trained on; evaluation uses them.
Every batch holds traj (B, K, C, H, W), x0 (B, C, H, W) in the stored dtype and labels (B,) int64.
"""

from __future__ import annotations

import hashlib
import io
import json
import queue
import random
import threading

import numpy as np
import torch

from ..stores import open_store, read_range
from ..stores.checks import require_finite, require_shapes
from ..stores.trust import require_trusted
from ..stores.wds_store import shard_key
from ..threads import default_threads
from ..errors import CMTError
from ..memory import check_memory
from ..seeding import sample_seed
from .data import TensorSource, Workers

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
    """The first n samples of array `name` of a zarr reader, read lazily by a tensor of indices (any order,
    repeats allowed) from shards the reader has checked; NaN or inf in what it reads is refused (stores/checks.py)."""

    def __init__(self, reader, name: str, n: int):
        self.reader, self.name, self.n = reader, name, n

    def __len__(self):
        return self.n

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        uniq, inverse = np.unique(idx.numpy(), return_inverse=True)
        values = self.reader.take(self.name, uniq)
        require_finite({"index": uniq, "values": values}, self.reader.root)
        return torch.from_numpy(np.ascontiguousarray(values[inverse]))


class WdsSource:
    """Streaming batches from WebDataset shards (re-iterable; each process iterates its own split)."""

    def __init__(self, reader, batch_size: int, seed: int, holdout: int, workers: int = 0, buffer: int = 1000):
        plan = reader.plan
        self.urls = [shard_key(k) for k in range(len(plan["shards"]))]
        self.reader, self.root, self.plan, self.limit = reader, reader.root, plan, plan["num_samples"] - holdout
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
            self.open_shards,
            wds.tariterators.tar_file_expander,
            wds.tariterators.group_by_keys,
            wds.map(decode),
            wds.select(lambda s: s["index"] < self.limit),
            wds.shuffle(self.buffer, rng=random.Random(seed)),
            wds.batched(per_process, collation_fn=self.collate),
        )

    def open_shards(self, src):
        """{url: shard key} -> with its stream, opened through the store's Location (a file or a remote object)
        once the reader has checked the shard (stores/trust.py)."""
        for shard in src:
            require_trusted(self.reader, self.urls.index(shard["url"]))
            yield {**shard, "stream": self.root.open(shard["url"])}

    def collate(self, samples: list[dict]) -> dict:
        """A batch, refused when its samples are not the plan's shapes or hold NaN or inf (stores/checks.py)."""
        arrays = {k: np.stack([s[k] for s in samples]) for k in (*FIELDS, "index")}
        require_shapes(arrays, self.plan, self.root)
        require_finite(arrays, self.root)
        return {k: torch.from_numpy(arrays[k]) for k in FIELDS}

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


def loader_workers() -> int:
    """Gathering processes for an in-memory store: up to 4 of this process's share of the CPUs (threads.py; a
    launcher's local processes split them), less the one that drives the GPU; none without CUDA, where the
    training step itself uses every CPU this process has."""
    return max(0, min(4, default_threads() - 1)) if torch.cuda.is_available() else 0


def trajectory_source(path, batch_size: int, seed: int = 0, holdout: int = 0, cache: bool | None = None,
                      require_complete: bool = True, max_cache_bytes: int = 8 << 30, workers: int | None = None,
                      reader=None):
    """(source, info) for the store at `path`; see the module doc. `workers`: processes that gather an in-memory
    store's batches (default loader_workers()); `reader`: the store already opened (open_store(path))."""
    reader = reader or open_store(path, require_complete)
    plan = reader.plan
    n = plan["num_samples"] - holdout
    if holdout < 0 or n < 1:
        raise CMTError(f"--holdout {holdout} leaves no training trajectories out of {plan['num_samples']}; "
                       "use a smaller holdout")
    info = dataset_info(path, plan, holdout)
    if plan["format"] == "wds":
        return WdsSource(reader, batch_size, seed, holdout), info
    if cache is None:
        cache = sample_bytes(plan) * n <= max_cache_bytes
    if cache:
        arrays = read_range(reader)
        source = TensorSource({k: torch.from_numpy(arrays[k][:n]) for k in FIELDS}, batch_size, seed)
        return Workers(source, loader_workers() if workers is None else workers), info
    columns = {k: ZarrColumn(reader, k, n) for k in FIELDS}
    return ReadAhead(TensorSource(columns, batch_size, seed)), info


class ReadAhead:
    """A BatchSource reading the batches of `source` on a thread, at most `ahead` of the loop: the loop waits
    only when the store is slower than a step, and memory stays bounded. The batches and their order are the
    source's, so resuming and multi-process splitting behave as without it."""

    def __init__(self, source, ahead: int = 4):
        self.source, self.ahead = source, ahead

    def batches(self, start: int, rank: int = 0, world: int = 1):
        q, stop = queue.Queue(self.ahead), threading.Event()

        def fill():
            try:
                for batch in self.source.batches(start, rank, world):
                    while not stop.is_set():
                        try:
                            q.put(batch, timeout=0.1)
                            break
                        except queue.Full:
                            pass
                    if stop.is_set():
                        return
            except Exception as e:  # raised in the loop's thread, where it names the problem
                q.put(e)

        threading.Thread(target=fill, daemon=True, name="read-ahead").start()
        try:
            while not isinstance(batch := q.get(), Exception):
                yield batch
            raise batch
        finally:
            stop.set()
