"""A trajectory dataset on disk, whatever its format:

    DIR/plan.json          what the dataset is (config, teacher, sigmas, shapes); a resumed run must match it
    DIR/done/NNNNNN.json   one marker per finished shard: its sample range and the sha256 of its files
    DIR/manifest.json      written only once every shard is done: the plan plus the list of shards
    DIR/<format payload>   data.zarr/ (Zarr v3 group) or shards/shard-NNNNNN.tar (WebDataset)

Shard k holds the consecutive global samples [k*S, min((k+1)*S, N)). A shard's files count only once its
marker exists, and markers are written atomically after the files, so a killed run leaves nothing that
looks complete. The manifest carries no timestamps or worker counts, so it is identical however it was made.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..utils import CMTError, atomic_write_json, sha256_file

PLAN = "plan.json"
MANIFEST = "manifest.json"
DONE = "done"
ARRAYS = ("prior", "traj", "x0", "labels", "index")


def shard_range(plan: dict, k: int) -> tuple[int, int]:
    s = plan["shard_size"]
    return k * s, min((k + 1) * s, plan["num_samples"])


def num_shards(plan: dict) -> int:
    return -(-plan["num_samples"] // plan["shard_size"])


def marker_path(root: Path, k: int) -> Path:
    return Path(root) / DONE / f"{k:06d}.json"


def write_marker(root: Path, plan: dict, k: int, files: list[Path]) -> None:
    start, stop = shard_range(plan, k)
    root = Path(root)
    digests = {str(f.relative_to(root)): sha256_file(f) for f in files}
    atomic_write_json(marker_path(root, k), {"index": k, "start": start, "stop": stop, "files": digests})


def done_shards(root: Path) -> set[int]:
    d = Path(root) / DONE
    return {int(p.stem) for p in d.glob("[0-9]*.json")} if d.exists() else set()


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CMTError(f"cannot read {path}: {e}; the dataset folder is damaged, regenerate it") from e


def claim_plan(root: Path, plan: dict) -> None:
    """Record the plan in an empty folder, or check a resumed folder holds the same dataset."""
    root = Path(root)
    if root.exists() and not (root / PLAN).exists() and any(root.iterdir()):
        raise CMTError(f"{root} is not empty and holds no trajectory dataset; choose another --out or empty it")
    (root / DONE).mkdir(parents=True, exist_ok=True)
    if not (root / PLAN).exists():
        atomic_write_json(root / PLAN, plan)  # racing workers write identical content
    existing = read_json(root / PLAN)
    if existing != json.loads(json.dumps(plan)):
        diff = sorted(k for k in set(existing) | set(plan) if existing.get(k) != json.loads(json.dumps(plan.get(k))))
        raise CMTError(f"{root} holds a different dataset (differs in: {', '.join(diff)}); "
                       "choose another --out, or rerun with the settings in its plan.json to resume")


def finalize(root: Path, strict: bool = True) -> dict | None:
    """Write manifest.json if every shard is done; return it (None when shards are missing and not strict)."""
    root = Path(root)
    plan = read_json(root / PLAN)
    missing = sorted(set(range(num_shards(plan))) - done_shards(root))
    if missing:
        if strict:
            raise CMTError(f"{root}: {len(missing)} shard(s) missing (first: {missing[:5]}); "
                           "rerun the same generate-trajectories command to fill them in")
        return None
    shards = [read_json(marker_path(root, k)) for k in range(num_shards(plan))]
    manifest = {**plan, "shards": shards, "complete": True}
    atomic_write_json(root / MANIFEST, manifest)
    return manifest
