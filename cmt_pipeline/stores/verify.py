"""Is a trajectory dataset complete and intact, and if not, exactly what regenerates it (`cmt verify`).

Two levels of checking, by cost:
  - cheap, at every `open_store`, on every generation resume/finalize and `cmt verify --quick`: each shard's files
    exist with the sizes its done marker recorded. Catches missing shards, deleted files and truncation, but not
    a flipped byte, so --quick never says "ready for training".
  - full, `cmt verify DIR`: also the sha256 of every file against its marker, the marker's sample range against
    the plan, and the content: each shard decodes and holds exactly the global sample indices of its range.
    It reads the whole dataset once, so it is run on demand, not at every open. Readers run the same sha256 and
    index check on each shard as they first read it (trust.py), so training never trains on what this rejects.
A corrupt shard still has its marker, so a rerun of generation would skip it: `repair` deletes the markers of
corrupt shards (and a manifest that no longer holds), after which rerunning the dataset's own command, rebuilt
from plan.json, regenerates exactly the missing and repaired shards.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import CMTError, first_line
from .checks import name_samples, nonfinite_samples
from .layout import (MANIFEST, PLAN, build_manifest, differing_keys, finalize, leftovers, marker_path, marker_problems,
                     num_shards, plan_fingerprint, plan_of, read_json, read_marker, read_plan, shard_range)
from .location import Location

MAX_LISTED = 20  # shard lines printed before "... and N more"


@dataclass
class Report:
    root: Location
    plan: dict
    full: bool
    missing: list[int] = field(default_factory=list)
    corrupt: dict[int, str] = field(default_factory=dict)
    manifest: str = "absent"  # ok | absent | stale
    leftovers: list[Path] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    seen: dict[str, object] = field(default_factory=dict)  # what the scan read of the files repair may delete

    @property
    def intact(self) -> bool:
        return not self.missing and not self.corrupt

    @property
    def ready(self) -> bool:
        """What training readers need: every shard intact and a manifest that matches them."""
        return self.intact and self.manifest == "ok"

    def text(self) -> str:
        n, plan = num_shards(self.plan), self.plan
        lines = [f"{self.root}: {n} shard(s) of {plan['shard_size']} samples ({plan['num_samples']} samples, "
                 f"{plan['format']}); checked {'sha256 + content' if self.full else 'file sizes only (--quick)'}"]
        bad = sorted([(k, "missing: no done marker") for k in self.missing]
                     + [(k, f"corrupt: {why}") for k, why in self.corrupt.items()])
        for k, why in bad[:MAX_LISTED]:
            start, stop = shard_range(plan, k)
            lines.append(f"  shard {k} (samples {start}..{stop - 1}): {why}")
        if len(bad) > MAX_LISTED:
            lines.append(f"  ... and {len(bad) - MAX_LISTED} more")
        if self.repaired:
            lines.append(f"repaired: removed {', '.join(self.repaired)}")
        if self.intact:
            lines.append(f"all {n} shards {'check out' if self.full else 'have their recorded sizes'}; " + {
                "ok": "manifest.json matches: ready for training" if self.full else
                      "manifest.json matches; contents not checked (--quick): training checks each shard's sha256 "
                      f"as it first reads it, `cmt verify {shlex.quote(str(self.root))}` checks them all now",
                "absent": f"not finalized: run `cmt verify {shlex.quote(str(self.root))} --finalize`",
                "stale": f"manifest.json does not match the shards: run `cmt verify "
                         f"{shlex.quote(str(self.root))} --finalize` to rewrite it"}[self.manifest])
        else:
            pending = [k for k in self.corrupt if self.root.exists(marker_path(k))]
            lines.append(f"INCOMPLETE: {len(self.missing)} missing and {len(self.corrupt)} corrupt of {n} shards; "
                         "to fix:")
            step = 1
            if pending:
                lines.append(f"  {step}. cmt verify {shlex.quote(str(self.root))} --repair   "
                             f"(removes the done markers of corrupt shards {pending[:10]}"
                             f"{' ...' if len(pending) > 10 else ''}, so they are regenerated)")
                step += 1
            lines.append(f"  {step}. {regenerate_command(self.plan, self.root)}")
            lines.append("     (regenerates only what is missing; add --num-workers N --worker-index I, or run it "
                         "under srun/torchrun, to spread it; see docs/cluster.md)")
        if self.leftovers:
            lines.append(f"note: {len(self.leftovers)} leftover temporary file(s) from interrupted writes (never "
                         "read); --finalize removes them once every shard checks out")
        return "\n".join(lines)


def regenerate_command(plan: dict, root) -> str:
    """The generate-trajectories command that (re)makes this dataset, rebuilt from plan.json's config."""
    args = ["cmt", "generate-trajectories"]
    for key, value in plan["config"].items():
        if value not in (None, ""):  # unset options (no --null-label, no --vae) keep their defaults
            args += [f"--{key.replace('_', '-')}", str(value)]
    return shlex.join([*args, "--out", str(root)])


def check_shard(root: Location, plan: dict, writer, reader, k: int, marker: dict, full: bool) -> str | None:
    """Why shard k, which has a marker, is not intact (None when it is)."""
    start, stop = shard_range(plan, k)
    if (marker.get("index"), marker.get("start"), marker.get("stop")) != (k, start, stop):
        return (f"its marker records shard {marker.get('index')} samples [{marker.get('start')}, "
                f"{marker.get('stop')}); the plan says shard {k} samples [{start}, {stop})")
    expected = sorted(writer.shard_files(k))
    if sorted(marker["files"]) != expected:
        return f"its marker lists files {sorted(marker['files'])}, expected {expected}"
    problems = marker_problems(root, plan, marker)
    if problems:
        return problems[0]
    if not full:
        return None
    for rel, rec in marker["files"].items():
        if root.sha256(rel) != rec["sha256"]:
            return f"{rel} does not match the sha256 in its marker (its bytes changed after it was written)"
    arrays = reader.read_shard(k)
    index = arrays["index"]
    if not np.array_equal(index, np.arange(start, stop)):
        return f"holds sample indices {index[:3].tolist()}... ({len(index)}), expected {start}..{stop - 1}"
    bad = nonfinite_samples(arrays)
    if len(bad):
        return f"holds NaN or inf in {name_samples(bad)}: a broken teacher (or --allow-nonfinite); not trainable"
    return None


def verify(root, full: bool = True, progress: bool = False) -> Report:
    """Check every shard of the dataset in `root` against its marker and the plan; never modifies anything."""
    from . import READERS, WRITERS  # the package imports this module, so not at the top

    root = Location.of(root)
    plan = read_plan(root)
    writer_cls, reader_cls = WRITERS[plan["format"]], READERS[plan["format"]]
    report = Report(root, plan, full, leftovers=leftovers(root))
    writer, reader = writer_cls(root, plan), None
    markers = {}
    for k in tqdm(range(num_shards(plan)), desc="verify", unit="shard", disable=not progress):
        try:
            marker = read_marker(root, k)
        except CMTError:
            report.corrupt[k] = f"its marker {marker_path(k)} is unreadable"
            report.seen[marker_path(k)] = None
            continue
        if marker is None:
            report.missing.append(k)
            continue
        report.seen[marker_path(k)] = marker
        try:
            if full and reader is None:
                reader = reader_cls(root, plan)
            why = check_shard(root, plan, writer, reader, k, marker, full)
        except Exception as e:  # anything a damaged file makes the decoder raise is a finding, not a crash
            why = f"unreadable ({first_line(e)})"
        if why:
            report.corrupt[k] = why
        markers[k] = marker
    if root.exists(MANIFEST):
        manifest = report.seen[MANIFEST] = read_or_none(root, MANIFEST)
        same = manifest == build_manifest(plan, [markers[k] for k in sorted(markers)])
        report.manifest = "ok" if same and report.intact else "stale"
    return report


def read_or_none(root: Location, rel: str):
    try:
        return read_json(root, rel)
    except CMTError:
        return None


def repair(report: Report) -> Report:
    """Delete the markers of corrupt shards, and a manifest that no longer holds, so a rerun regenerates them.
    Only files still as the scan read them: a marker or manifest written since (a generator finishing while
    verify ran) is newer than the report and is kept."""
    root = report.root
    doomed = [marker_path(k) for k in sorted(report.corrupt)]
    if not report.intact:
        doomed.append(MANIFEST)
    for rel in doomed:
        if rel in report.seen and root.exists(rel) and read_or_none(root, rel) == report.seen[rel]:
            root.remove(rel)
            report.repaired.append(rel)
    if report.repaired and report.manifest == "stale":
        report.manifest = "absent"
    return report


def finalize_verified(report: Report) -> Report:
    """Write (or rewrite) the manifest of an intact dataset and clear leftover temporary files."""
    if not report.intact:
        raise CMTError(f"{report.root} is not complete; fix it first (see `cmt verify {report.root}`)")
    finalize(report.root, strict=True)
    report.manifest, report.leftovers = "ok", leftovers(report.root)
    return report


def manifest_problems(root, manifest, plan: dict) -> list[str]:
    """The cheap check readers run at open: the manifest is plan.json's, bound to it by its fingerprint, lists
    every shard by a marker of this plan, and each shard's files have their recorded sizes."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        return [f"{MANIFEST} is not a trajectory manifest"]
    if plan_of(manifest) != plan:
        return [f"{MANIFEST} does not match {PLAN} (differs in: {differing_keys(plan_of(manifest), plan)})"]
    if manifest.get("plan_fingerprint") != plan_fingerprint(plan):
        return [f"{MANIFEST}'s plan_fingerprint is not {PLAN}'s"]
    shards = manifest["shards"]
    if [s.get("index") for s in shards] != list(range(num_shards(plan))):
        return [f"{MANIFEST} lists {len(shards)} shards, the plan has {num_shards(plan)}"]
    return [f"shard {s['index']}: {p}" for s in shards for p in marker_problems(root, plan, s)]
