"""The loop's data seam. A data source is either

- a `BatchSource`: any object with `batches(start, rank, world)` yielding this process's batch dicts for
  optimizer steps start+1, start+2, ... Stateless sources (batch k a function of (seed, k)) resume exactly
  and give the same global batches for any number of processes; or
- any re-iterable of batch dicts (a list, a torch DataLoader, a WebDataset pipeline): cycled over epochs,
  and on resume replayed and discarded up to the resume step, which is exact when the iterable is deterministic.
  Each process iterates its own copy, so shard it by rank yourself (e.g. webdataset's split_by_node).
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from itertools import count

import torch

from ..errors import CMTError
from ..memory import check_memory
from ..seeding import sample_seed


class TensorSource:
    """In-memory tensors (first dimension = samples) served in seeded epochs without replacement.

    The global sample stream is the concatenation of permutations seeded by (seed, epoch); global batch k is
    its k-th slice of `batch_size`, and process `rank` of `world` takes the rank-th equal part of it.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], batch_size: int, seed: int = 0):
        sizes = {k: len(v) for k, v in tensors.items()}
        if len(set(sizes.values())) != 1 or not min(sizes.values()):
            raise CMTError(f"data tensors must be non-empty and of equal length, got {sizes}")
        self.tensors, self.batch_size, self.seed = tensors, batch_size, seed
        self.n = next(iter(sizes.values()))
        first = [v[torch.zeros(1, dtype=torch.long)] for v in tensors.values()]  # one sample (a ZarrColumn too)
        check_memory("--batch-size", batch_size, sum(t.numel() * t.element_size() for t in first) + 8,  # + index
                     "one batch of samples")

    def indices(self, step: int) -> torch.Tensor:
        """Sample indices of global batch `step` (1-based)."""
        first, last = (step - 1) * self.batch_size, step * self.batch_size
        parts = []
        for epoch in range(first // self.n, (last - 1) // self.n + 1):
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(sample_seed(self.seed, epoch)))
            lo, hi = max(first - epoch * self.n, 0), min(last - epoch * self.n, self.n)
            parts.append(perm[lo:hi])
        return torch.cat(parts)

    def check_split(self, world: int) -> None:
        if self.batch_size % world:
            raise CMTError(f"batch size {self.batch_size} does not split over {world} processes; "
                           f"use a multiple of {world}")

    def batch(self, step: int, rank: int = 0, world: int = 1) -> dict:
        """Process `rank`'s part of global batch `step`: one gather per tensor, written straight into shared memory
        in a DataLoader worker (what the worker would otherwise copy there to send it)."""
        idx = self.indices(step).chunk(world)[rank]
        shared = torch.utils.data.get_worker_info() is not None
        return {k: gather(v, idx, shared) for k, v in self.tensors.items()}

    def batches(self, start: int, rank: int = 0, world: int = 1):
        self.check_split(world)
        for step in count(start + 1):
            yield self.batch(step, rank, world)

    def fingerprint(self) -> str:
        """sha256 over names, shapes and bytes: recorded with every checkpoint to name the exact training data."""
        h = hashlib.sha256()
        for k, v in sorted(self.tensors.items()):
            h.update(f"{k}:{tuple(v.shape)}:{v.dtype}".encode())
            h.update(v.contiguous().numpy().tobytes())
        return h.hexdigest()


def gather(values, idx: torch.Tensor, shared: bool = False) -> torch.Tensor:
    """values[idx] for a tensor (into shared memory when `shared`) or a lazy column (ZarrColumn)."""
    if not isinstance(values, torch.Tensor):
        return values[idx]
    out = None
    if shared:  # as torch's default_collate does in a worker
        out = values.new(values._typed_storage()._new_shared(len(idx) * values[0].numel()))
        out = out.resize_(len(idx), *values.shape[1:])
    return torch.index_select(values, 0, idx, out=out)


class Workers:
    """A BatchSource that serves a stateless source's batches (`source.batch(step, rank, world)`) from `workers`
    processes, `ahead` batches each, in step order, pinned for the device copy when CUDA is present: the training
    process neither gathers nor collates. The batches are the source's, so resuming and multi-process splitting
    behave as without it; workers = 0 serves them in the training process."""

    def __init__(self, source, workers: int, ahead: int = 2):
        self.source, self.workers, self.ahead = source, workers, ahead

    def batches(self, start: int, rank: int = 0, world: int = 1):
        self.source.check_split(world)
        if not self.workers:
            yield from self.source.batches(start, rank, world)
            return
        loader = torch.utils.data.DataLoader(
            StepBatches(self.source, start, rank, world), batch_size=None, sampler=count(),
            num_workers=self.workers, prefetch_factor=self.ahead, pin_memory=torch.cuda.is_available(),
            multiprocessing_context="fork")  # the source's tensors are shared copy-on-write, never pickled
        for batch in loader:
            if isinstance(batch, Exception):
                raise batch
            yield batch


class StepBatches(torch.utils.data.Dataset):
    """Item i: the batch of step start + 1 + i; a CMTError comes back as the item, to be raised as itself (a
    DataLoader would re-raise it wrapped in the worker's traceback, unfit for a user)."""

    def __init__(self, source, start: int, rank: int, world: int):
        self.source, self.start, self.rank, self.world = source, start, rank, world

    def __getitem__(self, i: int):
        try:
            return self.source.batch(self.start + 1 + i, self.rank, self.world)
        except CMTError as e:
            return e


def device_batches(stream, device: torch.device):
    """The batches of `stream` on `device`, each copied while the previous one trains. On CUDA the copy runs on a
    side stream (non-blocking from pinned memory) and the compute stream waits for it only when it uses the batch."""
    copy = torch.cuda.Stream(device) if device.type == "cuda" else None

    def issue(batch):
        with torch.cuda.stream(copy) if copy else nullcontext():
            return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    ahead = issue(next(stream))
    while True:
        batch = ahead
        if copy:
            compute = torch.cuda.current_stream(device)
            compute.wait_stream(copy)
            for v in batch.values():
                if torch.is_tensor(v):
                    v.record_stream(compute)  # its memory is not reused while the compute stream may still read it
        ahead = issue(next(stream))
        yield batch


def batch_stream(data, start: int, rank: int, world: int):
    """This process's batches for steps start+1, ... from a BatchSource or a re-iterable (see module doc)."""
    if hasattr(data, "batches"):
        yield from data.batches(start, rank, world)
        return
    seen = 0
    while True:
        empty = True
        for batch in data:
            empty = False
            seen += 1
            if seen > start:
                yield batch
        if empty:
            raise CMTError("the training data yielded no batches; check the dataset is not empty")
