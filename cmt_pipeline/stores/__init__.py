"""Stores: a writer/reader pair per format over one layout (layout.py), in a folder or under any fsspec URL
(location.py).

Writers: `prepare()`, `write_shard(k, arrays) -> {key: local file}` (published by layout.commit_shard),
`shard_files(k)`. Readers: `read_shard(k)`, `len()`.
Arrays per shard: prior (n,C,H,W) float32 unit noise, traj (n,K,C,H,W) states at sigma_0..sigma_{K-1},
x0 (n,C,H,W) the solver's final sample, labels (n,) int64 (-1 = unconditional), index (n,) int64.
"""

from __future__ import annotations

from ..errors import CMTError
from .checks import require_finite
from .layout import MANIFEST, finalize, num_shards, read_json, read_plan, shard_range
from .location import Location
from .verify import Report, manifest_problems, repair, verify
from .wds_store import WdsReader, WdsWriter
from .zarr_store import ZarrReader, ZarrWriter

WRITERS = {"zarr": ZarrWriter, "wds": WdsWriter}
READERS = {"zarr": ZarrReader, "wds": WdsReader}

__all__ = ["WRITERS", "READERS", "open_store", "read_all", "read_range", "read_tail", "read_head", "finalize", "num_shards",
           "shard_range", "verify", "repair", "Report", "Location"]


def open_store(root, require_complete: bool = True):
    """A reader for the dataset in `root`; its `plan` is the checked manifest (plan.json without require_complete).

    Unless require_complete=False it refuses a dataset without a manifest (incomplete), whose manifest is not
    plan.json's, or whose shard files are missing, foreign or not the size their markers recorded (damaged): a
    cheap stat per file. The plan, not the manifest, says what the data is; the reader checks the arrays' real
    shapes against it. Hashing every byte here would delay every start; instead such a reader checks each shard's
    sha256 and sample indices as it first reads it (trust.py). Without require_complete nothing is checked.
    """
    root = Location.of(root)
    plan = read_plan(root)
    if require_complete and root.exists(MANIFEST):
        manifest = read_json(root, MANIFEST)
        problems = manifest_problems(root, manifest, plan)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise CMTError(f"{root} is damaged: {problems[0]}{more}; run `cmt verify {root}` for the command that "
                           "repairs it (or open it with require_complete=False to read it anyway)")
        plan = manifest  # plan.json's content, as just checked, plus the shards
    elif require_complete:
        raise CMTError(f"{root} is incomplete (no {MANIFEST}); run `cmt verify {root}` to see what is missing "
                       "and the command that finishes it")
    return READERS[plan["format"]](root, plan)


def read_range(reader, start: int = 0, stop: int | None = None, finite: bool = True) -> dict:
    """Samples [start, stop) of an open store, concatenated in global order; reads only the shards that overlap.
    Refuses NaN or inf in them unless finite=False (inspection shows a store whatever it holds)."""
    import numpy as np

    plan = reader.plan
    stop = plan["num_samples"] if stop is None else min(stop, plan["num_samples"])
    parts = []
    for k in range(num_shards(plan)):
        a, b = shard_range(plan, k)
        if b > start and a < stop:
            parts.append({name: v[max(start - a, 0): stop - a] for name, v in reader.read_shard(k).items()})
    arrays = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    if finite:
        require_finite(arrays, reader.root)
    return arrays


def read_all(root, require_complete: bool = True, finite: bool = True):
    """Every array of the dataset, concatenated in global sample order (small datasets, tests, inspection)."""
    return read_range(open_store(root, require_complete), finite=finite)


def read_tail(root, num: int, reader=None) -> dict:
    """The last `num` samples (all if num <= 0) of a complete store, where mid-training keeps its held-out
    trajectories (`cmt mid-train --holdout`): prior, labels, x0, index, and the store's plan. `reader`: the
    store already opened (open_store(root)), so that a run opens and checks it once."""
    reader = reader or open_store(root)
    n = reader.plan["num_samples"]
    return _read(reader, max(n - num, 0) if num > 0 else 0, n)


def read_head(root, num: int, reader=None) -> dict:
    """The first `num` samples, as read_tail: ones mid-training does train on (its error there against the tail's
    shows memorisation)."""
    return _read(reader or open_store(root), 0, num)


def _read(reader, start: int, stop: int) -> dict:
    arrays = read_range(reader, start, stop)
    return {**{name: arrays[name] for name in ("prior", "labels", "x0", "index")}, "plan": reader.plan}
