"""Zarr v3 store: one group, arrays sharded so that one generation shard = one zarr shard file per array.

Inner chunks hold one sample (cheap random access for a map-style training reader); blosc/zstd with
bitshuffle compresses them. Workers only ever write whole zarr shards: concurrent partial-shard writes
from different processes would silently lose data.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import zarr

from .layout import ARRAYS, shard_range

GROUP = "data.zarr"


def _shapes(plan: dict) -> dict[str, tuple[tuple, str]]:
    c_h_w, k, dt = tuple(plan["shape"]), plan["num_states"], plan["dtype"]
    return {"prior": (c_h_w, "float32"), "traj": ((k, *c_h_w), dt), "x0": (c_h_w, dt),
            "labels": ((), "int64"), "index": ((), "int64")}


class ZarrWriter:
    format = "zarr"

    def __init__(self, root: Path, plan: dict):
        self.root, self.plan = Path(root), plan

    def prepare(self) -> None:
        """Create the group and its empty arrays once; safe when several workers race to do it."""
        path = self.root / GROUP
        if (path / "zarr.json").exists():
            return
        tmp = self.root / f".init-{uuid.uuid4().hex[:8]}"
        g = zarr.open_group(zarr.storage.LocalStore(tmp / GROUP), mode="w", attributes={"plan": self.plan})
        n, s = self.plan["num_samples"], self.plan["shard_size"]
        comp = zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")
        for name, (tail, dt) in _shapes(self.plan).items():
            g.create_array(name, shape=(n, *tail), chunks=(1, *tail), shards=(s, *tail), dtype=dt,
                           compressors=comp, fill_value=0, config={"write_empty_chunks": True})
        try:
            os.rename(tmp / GROUP, path)  # atomic; fails if a racing worker got there first, which is fine
        except OSError:
            if not (path / "zarr.json").exists():
                raise
        shutil.rmtree(tmp, ignore_errors=True)

    def shard_files(self, k: int) -> list[Path]:
        g = zarr.open_group(self.root / GROUP, mode="r")
        files = []
        for name in ARRAYS:
            a = g[name]
            files.append(self.root / GROUP / name / a.metadata.encode_chunk_key((k,) + (0,) * (a.ndim - 1)))
        return files

    def write_shard(self, k: int, arrays: dict[str, np.ndarray]) -> list[Path]:
        start, stop = shard_range(self.plan, k)
        g = zarr.open_group(self.root / GROUP, mode="r+")
        for name in ARRAYS:
            g[name][start:stop] = arrays[name]
        return self.shard_files(k)


class ZarrReader:
    """Map-style access by global sample index."""

    def __init__(self, root: Path, plan: dict):
        self.plan = plan
        self.group = zarr.open_group(Path(root) / GROUP, mode="r")
        self.arrays = {name: self.group[name] for name in ARRAYS}

    def __len__(self) -> int:
        return self.plan["num_samples"]

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {name: a[i] for name, a in self.arrays.items()}

    def read_shard(self, k: int) -> dict[str, np.ndarray]:
        start, stop = shard_range(self.plan, k)
        return {name: a[start:stop] for name, a in self.arrays.items()}
