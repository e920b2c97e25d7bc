"""Zarr v3 store: one group, arrays sharded so that one generation shard = one zarr shard file per array.

Inner chunks hold as many whole samples as fit in about 64 KiB (one sample each for CIFAR-sized trajectories,
a few dozen for 8x8 digits): random reads by sample stay cheap, and tiny samples are not encoded one by one,
which would dominate the generation time of small teachers. Blosc/zstd with bitshuffle compresses them. A shard is
never written in place: zarr would read-modify-write an existing shard file (concurrent partial-shard writes
silently lose data, a torn file from a killed run makes the rewrite fail, and object storage has no partial
update). Instead each shard file is encoded into a fresh local copy of its array and published whole (a rename,
or one PUT), so its bytes depend only on the data, whatever was there before.

The shard files are encoded here with numcodecs' Blosc directly (`encode_shard`: the sharding codec's layout,
byte for byte what zarr writes), not through zarr's asyncio codec pipeline: that runs one Python task per inner
chunk and holds the GIL for most of a shard, while a Blosc call releases it, so several threads encode at once.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
from numcodecs import Blosc

from ..threads import available_cpus
from ..errors import CMTError
from .checks import require_shapes
from .layout import ARRAYS, PLAN, plan_of, sample_arrays, shard_range
from .location import Location
from .trust import require_trusted

GROUP = "data.zarr"
FILL = {"prior": np.nan, "traj": np.nan, "x0": np.nan, "labels": -(2**62), "index": -1}
CHUNK_BYTES = 1 << 16
BLOSC = {"cname": "zstd", "clevel": 5, "shuffle": "bitshuffle"}
NO_CHUNK = 2**64 - 1  # a shard index entry (offset, length) for an inner chunk that was never written


def samples_per_chunk(shard_size: int, sample_bytes: int) -> int:
    """The largest divisor of the shard size whose chunk stays within CHUNK_BYTES (at least one sample)."""
    c = max(1, min(shard_size, CHUNK_BYTES // max(sample_bytes, 1)))
    while shard_size % c:
        c -= 1
    return c


def chunk_samples(plan: dict, name: str) -> int:
    """Samples per inner chunk of array `name`."""
    tail, dt = sample_arrays(plan)[name]
    return samples_per_chunk(plan["shard_size"], int(np.prod(tail, dtype=np.int64)) * np.dtype(dt).itemsize)


def shard_key(plan: dict, name: str, k: int) -> str:
    """The key of shard k's file in array `name`: zarr v3's default chunk-key encoding ("c/" and the chunk-grid
    index of its first chunk, "/"-separated), which the arrays are created with."""
    ndim = 1 + len(sample_arrays(plan)[name][0])
    return f"{GROUP}/{name}/c/" + "/".join(map(str, (k,) + (0,) * (ndim - 1)))


def encode_shard(a: np.ndarray, shard_size: int, chunk: int, fill, map=map) -> bytes:
    """One zarr v3 shard file holding `a` (the shard's samples, possibly fewer than shard_size) as zarr writes it
    with these arrays' codecs: each inner chunk of `chunk` samples that holds data (the last one padded with
    `fill`) through bytes (little-endian) and Blosc, concatenated in chunk order, then the index of (offset,
    length) uint64 pairs, little-endian, followed by its crc32c. `map` runs the Blosc calls (GIL released)."""
    a = np.ascontiguousarray(a, a.dtype.newbyteorder("<"))
    used = -(-len(a) // chunk)
    if len(a) < used * chunk:
        a = np.concatenate([a, np.full((used * chunk - len(a), *a.shape[1:]), fill, a.dtype)])
    blosc = Blosc(cname=BLOSC["cname"], clevel=BLOSC["clevel"], shuffle=Blosc.BITSHUFFLE, typesize=a.dtype.itemsize)
    chunks = list(map(blosc.encode, (a[i * chunk:(i + 1) * chunk] for i in range(used))))
    index = np.full((shard_size // chunk, 2), NO_CHUNK, "<u8")
    index[:used, 1] = [len(c) for c in chunks]
    index[:used, 0] = np.cumsum(index[:used, 1]) - index[:used, 1]
    index = index.tobytes()
    return b"".join([*chunks, index, np.uint32(google_crc32c.value(index)).astype("<u4").tobytes()])


class ZarrWriter:
    format = "zarr"

    def __init__(self, root, plan: dict, threads: int | None = None):
        """`threads`: how many Blosc calls write_shard runs at once (default: the CPUs this process may use)."""
        self.root, self.plan, self.threads = Location.of(root), plan, threads or available_cpus()

    def prepare(self) -> None:
        """Create the group and its empty arrays once; safe when several workers race to do it (each metadata
        file is created exclusively, with the same bytes whoever wins)."""
        if self.root.exists(f"{GROUP}/zarr.json"):
            return
        tmp = self.root.tmp("init")
        g = zarr.open_group(zarr.storage.LocalStore(tmp), mode="w", attributes={"plan": self.plan})
        n, s = self.plan["num_samples"], self.plan["shard_size"]
        comp = zarr.codecs.BloscCodec(**BLOSC)
        # Fill values are ones real data never holds, so a shard that was never written reads as such.
        for name, (tail, dt) in sample_arrays(self.plan).items():
            c = chunk_samples(self.plan, name)
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
        """Shard k's files, finished locally: {store key: local path} (layout.commit_shard publishes them). Every
        inner chunk holding samples is written, even one equal to the fill value (an all-NaN shard included), as
        zarr does with write_empty_chunks: a shard file then always exists, whatever its data."""
        files = {}
        with ThreadPoolExecutor(self.threads) as pool:
            for name in ARRAYS:
                key = shard_key(self.plan, name, k)
                files[key] = self.root.tmp(f"shard-{k:06d}-{name}")
                try:
                    files[key].write_bytes(encode_shard(arrays[name], self.plan["shard_size"],
                                                        chunk_samples(self.plan, name), FILL[name], pool.map))
                except BaseException:
                    for f in files.values():
                        f.unlink(missing_ok=True)
                    raise
        return files


class ZarrReader:
    """Map-style access by global sample index (lazily, by chunk, from a local folder or a URL); each shard is
    checked the first time it is read (trust.py): reads go through `read_shard`, `__getitem__` or `take`."""

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
        require_trusted(self, i // self.plan["shard_size"])
        return {name: a[i] for name, a in self.arrays.items()}

    def take(self, name: str, indices: np.ndarray) -> np.ndarray:
        """Array `name` at the sorted, distinct sample `indices` (a lazy training batch)."""
        for k in np.unique(indices // self.plan["shard_size"]):
            require_trusted(self, int(k))
        return self.arrays[name].get_orthogonal_selection(indices)

    def read_shard(self, k: int) -> dict[str, np.ndarray]:
        require_trusted(self, k)
        start, stop = shard_range(self.plan, k)
        return {name: a[start:stop] for name, a in self.arrays.items()}

    def digest(self, k: int) -> tuple[dict[str, str], np.ndarray | None]:
        """Shard k's files' sha256 and the sample indices it holds (None when they do not decode)."""
        start, stop = shard_range(self.plan, k)
        hashes = {rel: self.root.sha256(rel) for rel in (shard_key(self.plan, name, k) for name in ARRAYS)}
        try:
            return hashes, self.arrays["index"][start:stop]
        except Exception:  # a damaged index file: its sha256 names it
            return hashes, None
