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
from itertools import count

import torch

from ..utils import CMTError, check_memory, sample_seed


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

    def batches(self, start: int, rank: int = 0, world: int = 1):
        if self.batch_size % world:
            raise CMTError(f"batch size {self.batch_size} does not split over {world} processes; "
                           f"use a multiple of {world}")
        for step in count(start + 1):
            idx = self.indices(step).chunk(world)[rank]
            yield {k: v[idx] for k, v in self.tensors.items()}

    def fingerprint(self) -> str:
        """sha256 over names, shapes and bytes: recorded with every checkpoint to name the exact training data."""
        h = hashlib.sha256()
        for k, v in sorted(self.tensors.items()):
            h.update(f"{k}:{tuple(v.shape)}:{v.dtype}".encode())
            h.update(v.contiguous().numpy().tobytes())
        return h.hexdigest()


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
