"""Readers serve a shard only once its bytes are the ones its done marker certifies.

The checks at open (open_store) are cheap: manifest against plan.json, every file's size. They miss a flipped
byte, or a same-size shard swapped in from a store of another seed; `cmt verify` reads everything, but only when
asked. So a reader opened on a complete store checks each shard the first time this process reads it: its done
marker exists and is the one manifest.json lists, every file's sha256 is the marker's, and the shard holds
exactly its planned sample indices (a marker and manifest forged to match a moved shard). A failure stops the
reader with one line naming the shard and the repair. The result is kept for the life of the process, keyed by
the store, the shard and its recorded digests, so each shard is hashed once per process however many readers
open the store (training's data, its held-out tail, its head): one extra read of each shard
(docs/performance.md).
"""

from __future__ import annotations

import json
import shlex

import numpy as np

from ..errors import CMTError, first_line
from .layout import MANIFEST, marker_path, read_marker, shard_range

TRUSTED: set[tuple[str, int, str]] = set()  # (store, shard, its manifest record) checked in this process


def require_trusted(reader, k: int) -> None:
    """Refuse shard k of `reader` unless it checks out (once per process). A reader opened without a manifest
    (open_store(require_complete=False): inspection of a store as it is; `cmt verify`, which checks for itself)
    has no record to check against and serves what it finds."""
    shards = reader.plan.get("shards")
    if shards is None:
        return
    key = (str(reader.root), k, json.dumps(shards[k], sort_keys=True))
    if key in TRUSTED:
        return
    why = shard_problem(reader, k, shards[k])
    if why:
        start, stop = shard_range(reader.plan, k)
        root = shlex.quote(str(reader.root))
        raise CMTError(f"{reader.root}: shard {k} (samples {start}..{stop - 1}): {why}; not read: run "
                       f"`cmt verify {root} --repair` and then the command it prints")
    TRUSTED.add(key)


def shard_problem(reader, k: int, record: dict) -> str | None:
    """Why shard k is not the one manifest.json's `record` certifies (None when it is)."""
    try:
        marker = read_marker(reader.root, k)
    except CMTError:
        return f"its done marker {marker_path(k)} is unreadable"
    if marker is None:
        return f"no done marker {marker_path(k)}"
    if marker != record:
        return f"its done marker {marker_path(k)} is not the one {MANIFEST} lists"
    try:
        hashes, index = reader.digest(k)
    except CMTError:
        raise
    except Exception as e:  # whatever a damaged or vanished file makes the decoder raise
        return f"unreadable ({first_line(e)})"
    if sorted(hashes) != sorted(record["files"]):
        return f"its done marker lists files {sorted(record['files'])}, the shard has {sorted(hashes)}"
    for rel, rec in record["files"].items():
        if hashes[rel] != rec["sha256"]:
            return f"{rel} does not match the sha256 in its done marker (its bytes changed after it was written)"
    start, stop = shard_range(reader.plan, k)
    if index is None or not np.array_equal(index, np.arange(start, stop)):
        shown = "none readable" if index is None else f"{np.asarray(index)[:3].tolist()}... ({len(index)})"
        return f"holds sample indices {shown}, expected {start}..{stop - 1}"
    return None
