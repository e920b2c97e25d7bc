"""Zarr v3 store: one group, arrays sharded so that one generation shard = one zarr shard file per array.

Inner chunks hold as many whole samples as fit in about 64 KiB (one sample each for CIFAR-sized trajectories,
a few dozen for 8x8 digits): random reads by sample stay cheap, and tiny samples are not encoded one by one,
which would dominate the generation time of small teachers. Blosc/zstd with bitshuffle compresses them. A shard is
never written in place: zarr would read-modify-write an existing shard file (concurrent partial-shard writes
silently lose data, a torn file from a killed run makes the rewrite fail, and object storage has no partial
update). Instead each shard file is encoded into a fresh local copy of its array and published whole (a rename,
or one PUT), so its bytes depend only on the data, whatever was there before.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import zarr

from ..utils import CMTError
from .checks import require_shapes
from .layout import ARRAYS, PLAN, plan_of, sample_arrays, shard_range
from .location import Location

GROUP = "data.zarr"
# Write every chunk, even one equal to the fill value: a shard file then always exists, whatever its data (an
# all-NaN shard included). zarr 3.1's sharding codec reads only the global setting, not the array's config.
WRITE_CONFIG = {"array.write_empty_chunks": True}
FILL = {"prior": np.nan, "traj": np.nan, "x0": np.nan, "labels": -(2**62), "index": -1}
CHUNK_BYTES = 1 << 16


def samples_per_chunk(shard_size: int, sample_bytes: int) -> int:
    """The largest divisor of the shard size whose chunk stays within CHUNK_BYTES (at least one sample)."""
    c = max(1, min(shard_size, CHUNK_BYTES // max(sample_bytes, 1)))
    while shard_size % c:
        c -= 1
    return c


def shard_key(plan: dict, name: str, k: int) -> str:
    """The key of shard k's file in array `name`: zarr v3's default chunk-key encoding ("c/" and the chunk-grid
    index of its first chunk, "/"-separated), which the arrays are created with."""
    ndim = 1 + len(sample_arrays(plan)[name][0])
    return f"{GROUP}/{name}/c/" + "/".join(map(str, (k,) + (0,) * (ndim - 1)))


class ZarrWriter:
    format = "zarr"

    def __init__(self, root, plan: dict):
        self.root, self.plan = Location.of(root), plan

    def prepare(self) -> None:
        """Create the group and its empty arrays once; safe when several workers race to do it (each metadata
        file is created exclusively, with the same bytes whoever wins)."""
        if self.root.exists(f"{GROUP}/zarr.json"):
            return
        tmp = self.root.tmp("init")
        g = zarr.open_group(zarr.storage.LocalStore(tmp), mode="w", attributes={"plan": self.plan})
        n, s = self.plan["num_samples"], self.plan["shard_size"]
        comp = zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")
        # Fill values are ones real data never holds, so a shard that was never written reads as such.
        for name, (tail, dt) in sample_arrays(self.plan).items():
            c = samples_per_chunk(s, int(np.prod(tail, dtype=np.int64)) * np.dtype(dt).itemsize)
            g.create_array(name, shape=(n, *tail), chunks=(c, *tail), shards=(s, *tail), dtype=dt,
                           compressors=comp, fill_value=FILL[name],
                           chunk_key_encoding={"name": "default", "separator": "/"})
        # arrays first, the group's zarr.json (what `prepare` looks for) last
        for f in sorted(tmp.rglob("zarr.json"), key=lambda f: -len(f.parts)):
            self.root.create(f"{GROUP}/{f.relative_to(tmp).as_posix()}", f.read_bytes())
        shutil.rmtree(tmp, ignore_errors=True)

    def shard_files(self, k: int) -> list[str]:
        return [shard_key(self.plan, name, k) for name in ARRAYS]

    def write_shard(self, k: int, arrays: dict[str, np.ndarray]) -> dict[str, Path]:
        """Shard k's files, finished locally: {store key: local path} (layout.commit_shard publishes them)."""
        start, stop = shard_range(self.plan, k)
        tmp = self.root.tmp(f"shard-{k:06d}")
        files = {}
        for name in ARRAYS:
            (tmp / name).mkdir(parents=True)
            (tmp / name / "zarr.json").write_bytes(self.root.read_bytes(f"{GROUP}/{name}/zarr.json"))
            with zarr.config.set(WRITE_CONFIG):
                zarr.open_array(zarr.storage.LocalStore(tmp / name), mode="r+")[start:stop] = arrays[name]
            key = shard_key(self.plan, name, k)
            files[key] = tmp.with_name(f"{tmp.name}-{name}")
            (tmp / name / key.split("/", 2)[2]).rename(files[key])
        shutil.rmtree(tmp)
        return files


class ZarrReader:
    """Map-style access by global sample index (lazily, by chunk, from a local folder or a URL)."""

    def __init__(self, root, plan: dict):
        self.root, self.plan = Location.of(root), plan
        self.group = zarr.open_group(self.root.zarr_store(GROUP), mode="r")
        if self.group.attrs.get("plan") != plan_of(plan):
            raise CMTError(f"{root}: the zarr group's plan is not {PLAN}'s; the store is damaged, run `cmt verify {root}`")
        self.arrays = {name: self.group[name] for name in ARRAYS}
        require_shapes(self.arrays, plan, root)
        lengths = {name: a.shape[0] for name, a in self.arrays.items()}
        if set(lengths.values()) != {plan["num_samples"]}:
            raise CMTError(f"{root}: the arrays hold {lengths} samples, the plan says {plan['num_samples']}; "
                           f"the store is damaged, run `cmt verify {root}`")

    def __len__(self) -> int:
        return self.plan["num_samples"]

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {name: a[i] for name, a in self.arrays.items()}

    def read_shard(self, k: int) -> dict[str, np.ndarray]:
        start, stop = shard_range(self.plan, k)
        return {name: a[start:stop] for name, a in self.arrays.items()}
