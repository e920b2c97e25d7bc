"""Stores: a writer/reader pair per format over one folder layout (see layout.py).

Writers: `prepare()`, `write_shard(k, arrays) -> files`, `shard_files(k)`. Readers: `read_shard(k)`, `len()`.
Arrays per shard: prior (n,C,H,W) float32 unit noise, traj (n,K,C,H,W) states at sigma_0..sigma_{K-1},
x0 (n,C,H,W) the solver's final sample, labels (n,) int64 (-1 = unconditional), index (n,) int64.
"""

from __future__ import annotations

from pathlib import Path

from ..utils import CMTError
from .layout import MANIFEST, PLAN, finalize, num_shards, read_json, shard_range
from .wds_store import WdsReader, WdsWriter
from .zarr_store import ZarrReader, ZarrWriter

WRITERS = {"zarr": ZarrWriter, "wds": WdsWriter}
READERS = {"zarr": ZarrReader, "wds": WdsReader}

__all__ = ["WRITERS", "READERS", "open_store", "read_all", "finalize", "num_shards", "shard_range"]


def open_store(root, require_complete: bool = True):
    """A reader for the dataset in `root`; refuses an incomplete dataset unless require_complete=False."""
    root = Path(root)
    if not (root / PLAN).exists():
        raise CMTError(f"{root} is not a trajectory dataset (no {PLAN}); make one with `cmt generate-trajectories`")
    if (root / MANIFEST).exists():
        plan = read_json(root / MANIFEST)
    elif require_complete:
        raise CMTError(f"{root} is incomplete (no {MANIFEST}); rerun its generate-trajectories command "
                       "to finish it, or run `cmt verify` to see what is missing")
    else:
        plan = read_json(root / PLAN)
    return READERS[plan["format"]](root, plan)


def read_all(root, require_complete: bool = True):
    """Every array of the dataset, concatenated in global sample order (small datasets, tests, inspection)."""
    import numpy as np

    reader = open_store(root, require_complete)
    parts = [reader.read_shard(k) for k in range(num_shards(reader.plan))]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
