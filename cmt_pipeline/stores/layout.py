"""A trajectory dataset on disk, whatever its format:

    DIR/plan.json          what the dataset is (config, teacher, sigmas, shapes); a resumed run must match it
    DIR/done/NNNNNN.json   one marker per finished shard: its sample range, and the size and sha256 of its files
    DIR/manifest.json      written only once every shard is done: the plan plus the list of shards
    DIR/<format payload>   data.zarr/ (Zarr v3 group) or shards/shard-NNNNNN.tar (WebDataset)
    DIR/.tmp/              in-flight writes only; removed when the dataset is finalized

Shard k holds the consecutive global samples [k*S, min((k+1)*S, N)). Every file is first written under
DIR/.tmp and then renamed into place (atomic on one file system), and a shard's marker is written only after
its files, so a killed run leaves nothing that looks complete: at worst a file without a marker (redone by the
next run) and debris in .tmp (never read, cleared at finalize). The manifest carries no timestamps or worker
counts, so it is identical however many workers made the dataset.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

from ..utils import CMTError, atomic_file, replace_file, sha256_file

PLAN = "plan.json"
MANIFEST = "manifest.json"
DONE = "done"
TMP = ".tmp"
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


def temp_path(root: Path, tag: str) -> Path:
    """A fresh name under DIR/.tmp for one in-flight write (unique per process and call)."""
    d = Path(root) / TMP
    for attempt in range(3):
        try:
            d.mkdir(parents=True, exist_ok=True)
            break
        except FileExistsError:  # a concurrent clean_temp removed it between mkdir's two checks
            if attempt == 2:
                raise
    return d / f"{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def publish(tmp: Path, final: Path) -> None:
    """Move a file finished under DIR/.tmp into place (utils.replace_file), making its folder if needed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    replace_file(tmp, final)


def write_json(root: Path, path: Path, obj) -> None:
    """Write through DIR/.tmp, so an interrupted write's debris is where finalize clears it."""
    with atomic_file(path, temp_path(root, Path(path).name)) as f:
        f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def leftovers(root: Path) -> list[Path]:
    """Debris of interrupted writes: DIR/.tmp, and `.NAME.tmp-*` files (the atomic-write naming of utils and
    the WebDataset writer, which write beside the target)."""
    root = Path(root)
    found = []
    for folder, _, files in os.walk(root):  # unlike rglob, walk skips folders a concurrent clean removes
        in_tmp = Path(folder).relative_to(root).parts[:1] == (TMP,)
        found += [Path(folder) / f for f in files if in_tmp or fnmatch.fnmatch(f, ".*.tmp-*")]
    return sorted(found)


def clean_temp(root: Path) -> None:
    for p in leftovers(root):
        p.unlink(missing_ok=True)
    shutil.rmtree(Path(root) / TMP, ignore_errors=True)


def marker_path(root: Path, k: int) -> Path:
    return Path(root) / DONE / f"{k:06d}.json"


def write_marker(root: Path, plan: dict, k: int, files: list[Path]) -> None:
    start, stop = shard_range(plan, k)
    root = Path(root)
    entries = {str(f.relative_to(root)): {"bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in files}
    write_json(root, marker_path(root, k), {"index": k, "start": start, "stop": stop, "files": entries,
                                            "plan": plan_fingerprint(plan)})


def done_shards(root: Path) -> set[int]:
    d = Path(root) / DONE
    return {int(p.stem) for p in d.glob("[0-9]*.json")} if d.exists() else set()


def size_problems(root: Path, marker: dict) -> list[str]:
    """The cheap check: each file of a shard exists with the size its marker recorded (no reading)."""
    problems = []
    for rel, rec in marker["files"].items():
        p = Path(root) / rel
        if not p.is_file():
            problems.append(f"{rel} is missing")
        elif p.stat().st_size != rec["bytes"]:
            problems.append(f"{rel} has {p.stat().st_size} bytes, its marker says {rec['bytes']}")
    return problems


def marker_problems(root: Path, plan: dict, marker: dict) -> list[str]:
    """The cheap check of a done marker: it names this dataset's plan, and its files have their recorded sizes."""
    fingerprint = plan_fingerprint(plan)
    if marker.get("plan") != fingerprint:
        return [f"its done marker belongs to another dataset (plan fingerprint {str(marker.get('plan'))[:12]}, "
                f"this dataset's is {fingerprint[:12]})"]
    return size_problems(root, marker)


def differing_keys(a: dict, b: dict) -> str:
    return ", ".join(sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)))


def read_marker(root: Path, k: int) -> dict | None:
    """Shard k's marker, or None when the shard is not done."""
    p = marker_path(root, k)
    return read_json(p) if p.exists() else None


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CMTError(f"cannot read {path}: {e}; the dataset folder is damaged, regenerate it") from e


def read_plan(root: Path) -> dict:
    """plan.json, refused in one line when absent, damaged, or of a store format this cmt does not read."""
    root = Path(root)
    if not (root / PLAN).exists():
        raise CMTError(f"{root} is not a trajectory dataset (no {PLAN}); make one with `cmt generate-trajectories`")
    plan = read_json(root / PLAN)
    if not isinstance(plan, dict) or plan.get("format") not in FORMATS:
        raise CMTError(f"{root / PLAN} is not a trajectory plan of a known format ({', '.join(FORMATS)}); "
                       "the file is damaged, regenerate the dataset")
    version = plan.get("store_version", 1)
    if version != STORE_VERSION:
        raise CMTError(f"{root} is a store of format {version}; this cmt reads format {STORE_VERSION}, whose done "
                       "markers name their dataset: regenerate it into a new --out with the settings in its plan.json")
    return plan


def claim_plan(root: Path, plan: dict) -> None:
    """Record the plan in an empty folder, or check a resumed folder holds the same dataset.

    The plan is written complete under DIR/.tmp and then hard-linked to plan.json, which fails if plan.json
    exists: of generators racing on one folder exactly one plan wins, and every other one compares against it.
    """
    root = Path(root)
    # Listed before plan.json is looked for: a claimant makes nothing else before plan.json, which stays.
    foreign = root.exists() and any(p.name not in (TMP, PLAN, DONE) for p in root.iterdir())
    if foreign and not (root / PLAN).exists():
        raise CMTError(f"{root} is not empty and holds no trajectory dataset; choose another --out or empty it")
    if not (root / PLAN).exists():
        tmp = temp_path(root, PLAN)
        tmp.write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n")
        try:
            os.link(tmp, root / PLAN)
        except FileExistsError:
            pass  # another generator claimed the folder first: compared below
        finally:
            tmp.unlink(missing_ok=True)
    (root / DONE).mkdir(exist_ok=True)
    existing, plan = read_plan(root), json.loads(json.dumps(plan))
    if existing != plan:
        raise CMTError(f"{root} holds a different dataset (differs in: {differing_keys(existing, plan)}); "
                       "choose another --out, or rerun with the settings in its plan.json to resume")


def build_manifest(plan: dict, markers: list[dict]) -> dict:
    return {**plan, "plan_fingerprint": plan_fingerprint(plan), "shards": markers, "complete": True}


def plan_of(manifest: dict) -> dict:
    """The plan a manifest was built from (build_manifest's inverse)."""
    return {k: v for k, v in manifest.items() if k not in ("plan_fingerprint", "shards", "complete")}


def finalize(root: Path, strict: bool = True) -> dict | None:
    """Write manifest.json if every shard is done and its files have their recorded sizes; clear DIR/.tmp.

    Returns the manifest, or None when the set is not complete and not strict (strict raises instead).
    The full sha256 check is `cmt verify`'s job: finalizing must stay cheap for the worker that completes a set.
    """
    root = Path(root)
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
        write_json(root, root / MANIFEST, manifest)
    except (FileNotFoundError, FileExistsError):
        # Workers finishing together all finalize, and one's clean_temp can remove another's temporary
        # manifest; it cleans only after writing the manifest itself, and every finalizer writes the same one.
        if not (root / MANIFEST).exists() or read_json(root / MANIFEST) != json.loads(json.dumps(manifest)):
            raise
    clean_temp(root)
    return manifest
