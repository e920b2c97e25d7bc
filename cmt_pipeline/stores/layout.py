"""A trajectory dataset in a folder or under a URL (location.py), whatever its format:

    DIR/plan.json          what the dataset is (config, teacher, sigmas, shapes); a resumed run must match it
    DIR/done/NNNNNN.json   one marker per finished shard: its sample range, the size and sha256 of its files,
                           and the plan's fingerprint
    DIR/manifest.json      written only once every shard is done: the plan plus the list of shards
    DIR/<format payload>   data.zarr/ (Zarr v3 group) or shards/shard-NNNNNN.tar (WebDataset)
    DIR/.tmp/              local folders only: in-flight writes; removed when the dataset is finalized

Shard k holds the consecutive global samples [k*S, min((k+1)*S, N)). A shard's files are finished first (under
DIR/.tmp, or a local temporary folder for a remote store), hashed, and published whole (a rename, or one PUT);
its marker is written only after them, the manifest only after every marker. So a killed run leaves nothing
that looks complete: at worst a file without a marker (overwritten by the next run) and debris in .tmp (never
read, cleared at finalize). Readers trust only what markers and the manifest name. The manifest carries no
timestamps or worker counts, so it is identical however many workers made the dataset.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
from pathlib import Path

from ..errors import CMTError
from ..files import sha256_file
from .location import TMP, Location

PLAN = "plan.json"
MANIFEST = "manifest.json"
DONE = "done"
ARRAYS = ("prior", "traj", "x0", "labels", "index")
FORMATS = ("zarr", "wds")
# 2: done markers carry the plan's fingerprint and the manifest its plan_fingerprint (format 1 had neither).
STORE_VERSION = 2


def plan_fingerprint(plan: dict) -> str:
    """sha256 of the plan's canonical JSON: it holds the config and the teacher's fingerprint, so a marker or
    manifest carrying it belongs to this dataset and no other."""
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def sample_arrays(plan: dict) -> dict[str, tuple[tuple, str]]:
    """Each array's per-sample shape and dtype, as the plan promises them."""
    c_h_w, k, dt = tuple(plan["shape"]), plan["num_states"], plan["dtype"]
    return {"prior": (c_h_w, "float32"), "traj": ((k, *c_h_w), dt), "x0": (c_h_w, dt), "labels": ((), "int64"),
            "index": ((), "int64")}


def shard_range(plan: dict, k: int) -> tuple[int, int]:
    s = plan["shard_size"]
    return k * s, min((k + 1) * s, plan["num_samples"])


def num_shards(plan: dict) -> int:
    return -(-plan["num_samples"] // plan["shard_size"])


def dumps(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def write_json(root: Location, rel: str, obj) -> None:
    root.write_bytes(rel, dumps(obj))


def read_json(root: Location, rel: str):
    try:
        return json.loads(root.read_bytes(rel))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CMTError(f"cannot read {root.name(rel)}: {e}; the dataset is damaged, regenerate it") from e


def leftovers(root) -> list[Path]:
    """Debris of interrupted writes in a local folder: DIR/.tmp, and `.NAME.tmp-*` files (the atomic-write naming
    of files.temp_name). A remote store has none: its unmarked objects are overwritten by the next run."""
    root = Location.of(root)
    if not root.local:
        return []
    found = []
    for folder, _, files in os.walk(root.path):  # unlike rglob, walk skips folders a concurrent clean removes
        in_tmp = Path(folder).relative_to(root.path).parts[:1] == (TMP,)
        found += [Path(folder) / f for f in files if in_tmp or fnmatch.fnmatch(f, ".*.tmp-*")]
    return sorted(found)


def clean_temp(root: Location) -> None:
    for p in leftovers(root):
        p.unlink(missing_ok=True)
    if root.local:
        shutil.rmtree(root.path / TMP, ignore_errors=True)
    root.clean_scratch()


def marker_path(k: int) -> str:
    return f"{DONE}/{k:06d}.json"


def commit_shard(root, plan: dict, k: int, files: dict[str, Path]) -> None:
    """Publish shard k: its finished local files {key: path}, hashed here, then put in place, then its marker."""
    root = Location.of(root)
    entries = {rel: {"bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)} for rel, tmp in files.items()}
    for rel, tmp in files.items():
        root.put(tmp, rel)
    start, stop = shard_range(plan, k)
    write_json(root, marker_path(k), {"index": k, "start": start, "stop": stop, "files": entries,
                                      "plan": plan_fingerprint(plan)})


def done_shards(root: Location) -> set[int]:
    return {int(n[:-5]) for n in root.list(DONE) if n.endswith(".json") and n[:-5].isdigit()}


def size_problems(root: Location, marker: dict) -> list[str]:
    """The cheap check: each file of a shard exists with the size its marker recorded (no reading)."""
    problems = []
    for rel, rec in marker["files"].items():
        size = root.size(rel)
        if size is None:
            problems.append(f"{rel} is missing")
        elif size != rec["bytes"]:
            problems.append(f"{rel} has {size} bytes, its marker says {rec['bytes']}")
    return problems


def marker_problems(root: Location, plan: dict, marker: dict) -> list[str]:
    """The cheap check of a done marker: it names this dataset's plan, and its files have their recorded sizes."""
    fingerprint = plan_fingerprint(plan)
    if marker.get("plan") != fingerprint:
        return [f"its done marker belongs to another dataset (plan fingerprint {str(marker.get('plan'))[:12]}, "
                f"this dataset's is {fingerprint[:12]})"]
    return size_problems(root, marker)


def differing_keys(a: dict, b: dict) -> str:
    return ", ".join(sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)))


def read_marker(root: Location, k: int) -> dict | None:
    """Shard k's marker, or None when the shard is not done."""
    return read_json(root, marker_path(k)) if root.exists(marker_path(k)) else None


def read_plan(root) -> dict:
    """plan.json, refused in one line when absent, damaged, or of a store format this cmt does not read."""
    root = Location.of(root)
    if not root.exists(PLAN):
        raise CMTError(f"{root} is not a trajectory dataset (no {PLAN}); make one with `cmt generate-trajectories`")
    plan = read_json(root, PLAN)
    if not isinstance(plan, dict) or plan.get("format") not in FORMATS:
        raise CMTError(f"{root.name(PLAN)} is not a trajectory plan of a known format ({', '.join(FORMATS)}); "
                       "the file is damaged, regenerate the dataset")
    version = plan.get("store_version", 1)
    if version != STORE_VERSION:
        raise CMTError(f"{root} is a store of format {version}; this cmt reads format {STORE_VERSION}, whose done "
                       "markers name their dataset: regenerate it into a new --out with the settings in its plan.json")
    return plan


def claim_plan(root, plan: dict) -> None:
    """Record the plan in an empty folder, or check a resumed folder holds the same dataset.

    The plan is created exclusively (location.create: a hard link locally, a conditional PUT on object storage):
    of generators racing on one folder exactly one plan wins, and every other one compares against it.
    """
    root = Location.of(root)
    # Listed before plan.json is looked for: a claimant makes nothing else before plan.json, which stays.
    foreign = any(n not in (TMP, PLAN, DONE) for n in root.list(""))
    if foreign and not root.exists(PLAN):
        raise CMTError(f"{root} is not empty and holds no trajectory dataset; choose another --out or empty it")
    if not root.exists(PLAN):
        root.create(PLAN, dumps(plan))  # False: another generator claimed it first, compared below
    existing, plan = read_plan(root), json.loads(json.dumps(plan))
    if existing != plan:
        if existing.get("solver_revision") != plan.get("solver_revision"):
            raise CMTError(f"{root} was made by a cmt whose solvers compute differently (solver revision "
                           f"{existing.get('solver_revision', 1)}, this one {plan.get('solver_revision')}); resume "
                           "it with the cmt that began it, or regenerate into a new --out")
        raise CMTError(f"{root} holds a different dataset (differs in: {differing_keys(existing, plan)}); "
                       "choose another --out, or rerun with the settings in its plan.json to resume")


def build_manifest(plan: dict, markers: list[dict]) -> dict:
    return {**plan, "plan_fingerprint": plan_fingerprint(plan), "shards": markers, "complete": True}


def plan_of(manifest: dict) -> dict:
    """The plan a manifest was built from (build_manifest's inverse)."""
    return {k: v for k, v in manifest.items() if k not in ("plan_fingerprint", "shards", "complete")}


def finalize(root, strict: bool = True) -> dict | None:
    """Write manifest.json if every shard is done and its files have their recorded sizes; clear DIR/.tmp.

    Returns the manifest, or None when the set is not complete and not strict (strict raises instead).
    The full sha256 check is `cmt verify`'s job: finalizing must stay cheap for the worker that completes a set.
    """
    root = Location.of(root)
    plan = read_plan(root)
    markers = [read_marker(root, k) for k in range(num_shards(plan))]
    missing = [k for k, m in enumerate(markers) if m is None]
    damaged = [k for k, m in enumerate(markers) if m is not None and marker_problems(root, plan, m)]
    if missing or damaged:
        if strict:
            raise CMTError(f"{root}: {len(missing)} shard(s) missing (first: {missing[:5]}), {len(damaged)} "
                           f"damaged (first: {damaged[:5]}); run `cmt verify {root}` for the fix")
        return None
    manifest = build_manifest(plan, markers)
    try:
        # Workers finishing together all finalize with the same content: the first creates it; a stale one
        # (a store repaired and finished since) is replaced.
        if not root.create(MANIFEST, dumps(manifest)) and read_json(root, MANIFEST) != manifest:
            write_json(root, MANIFEST, manifest)
    except (FileNotFoundError, FileExistsError):
        # One finalizer's clean_temp can remove another's temporary file; it cleans only after the manifest exists.
        if not root.exists(MANIFEST) or read_json(root, MANIFEST) != manifest:
            raise
    clean_temp(root)
    return manifest
