"""WebDataset store: one tar per shard, one sample per zero-padded global-index key, plain .npy entries.

Each tar is finished locally, with fixed mtime/owner so that the bytes depend only on the data, and published
whole (layout.commit_shard). Entries: KEY.prior.npy, KEY.traj.npy, KEY.x0.npy, KEY.label.npy.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import webdataset as wds

from .checks import require_shapes
from .layout import shard_range
from .location import Location
from .trust import require_trusted

SHARDS = "shards"
KEY_DIGITS = 9  # room for a billion samples; keys sort in sample order
ENTRIES = {"prior": "prior.npy", "traj": "traj.npy", "x0": "x0.npy", "labels": "label.npy"}


def shard_key(k: int) -> str:
    return f"{SHARDS}/shard-{k:06d}.tar"


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()


class WdsWriter:
    format = "wds"

    def __init__(self, root, plan: dict):
        self.root, self.plan = Location.of(root), plan

    def prepare(self) -> None:
        pass  # a tar needs no folder made in advance (commit_shard makes it)

    def shard_files(self, k: int) -> list[str]:
        return [shard_key(k)]

    def write_shard(self, k: int, arrays: dict[str, np.ndarray]) -> dict[str, Path]:
        """Shard k's tar, finished locally: {store key: local path} (layout.commit_shard publishes it)."""
        tmp = self.root.tmp(f"shard-{k:06d}.tar")
        try:
            with open(tmp, "wb") as f, wds.TarWriter(f, encoder=False, mtime=0, user="cmt", group="cmt") as sink:
                for j, idx in enumerate(arrays["index"]):
                    sample = {"__key__": f"{int(idx):0{KEY_DIGITS}d}"}
                    sample.update({ext: _npy(arrays[name][j]) for name, ext in ENTRIES.items()})
                    sink.write(sample)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return {shard_key(k): tmp}


class WdsReader:
    """Reads whole shards with the standard library (no pickle); training streams them with webdataset. Each shard
    is checked the first time it is read (trust.py): by `read_shard`, or `require_trusted` before streaming it."""

    def __init__(self, root, plan: dict):
        self.root, self.plan = Location.of(root), plan

    def __len__(self) -> int:
        return self.plan["num_samples"]

    def read_shard(self, k: int) -> dict[str, np.ndarray]:
        require_trusted(self, k)
        start, stop = shard_range(self.plan, k)
        cols = {name: [] for name in (*ENTRIES, "index")}
        by_ext = {ext: name for name, ext in ENTRIES.items()}
        with self.root.open(shard_key(k)) as f, tarfile.open(fileobj=f) as tar:
            for m in tar:
                key, ext = m.name.split(".", 1)
                if ext == "prior.npy":
                    cols["index"].append(int(key))
                cols[by_ext[ext]].append(np.load(io.BytesIO(tar.extractfile(m).read()), allow_pickle=False))
        out = {name: np.stack(v) for name, v in cols.items()}
        if len(out["index"]) != stop - start:
            raise ValueError(f"shard {k} holds {len(out['index'])} samples, expected {stop - start}")
        require_shapes(out, self.plan, self.root)
        return out

    def digest(self, k: int) -> tuple[dict[str, str], np.ndarray | None]:
        """Shard k's tar's sha256 and the sample indices its keys name (None when it does not parse), from one read."""
        data = self.root.read_bytes(shard_key(k))
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                index = np.array([int(m.name.split(".", 1)[0]) for m in tar if m.name.endswith(".prior.npy")])
        except (tarfile.TarError, ValueError):  # a damaged tar: its sha256 names it
            index = None
        return {shard_key(k): hashlib.sha256(data).hexdigest()}, index
