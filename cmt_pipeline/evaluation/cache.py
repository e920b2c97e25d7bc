"""The evaluation cache: an evaluation is a pure function of the generator's weights and the protocol, so the rows
every pipeline run repeats (its teacher's, which cost more than the students') are measured once per teacher.

An entry is `<key>.json` (what evaluation.json holds) and `<key>.png` (its samples picture) in
$CMT_CACHE/evaluations/ ($XDG_CACHE_HOME/cmt, else ~/.cache/cmt, when unset), both written atomically, the JSON
last. The key is the sha256 of: METRIC_VERSION, the generator's description and weights fingerprint (its VAE's
too), the resolved seeds, every other EvaluateConfig field that can change a number, the identity of each feature
network and reference by content, and the store's plan fingerprint for the paired error. Left out are what cannot
change a number (out, batch_size: samples do not depend on it, device, cache), paths (identified by content
instead) and the pipeline-only fields. Anything else that changes gives a new key, so the row is measured again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import fields
from pathlib import Path

from ..config import EvaluateConfig, to_dict
from ..stores import open_store
from ..stores.layout import plan_fingerprint
from ..files import atomic_write_bytes, atomic_write_json, sha256_file
from .features import CLASSIFIER_DIR, WEIGHTS

# Bump whenever the code of a metric (or of sampling) changes what it returns: entries made before then miss.
METRIC_VERSION = 3  # 2: dpm3 steps as one multiply and fused adds (round-off); 3: one intra-op thread a batch
NOT_IN_KEY = {"out", "batch_size", "device", "cache", "seed", "seeds", "teacher", "student", "vae", "store",
              "inception_weights", "fid_reference"}


def cache_dir() -> Path:
    root = os.environ.get("CMT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cmt"
    return Path(root) / "evaluations"


def key_parts(cfg: EvaluateConfig, sampler, vae, seeds: list[int]) -> dict:
    """What an evaluation's numbers depend on (see the module's docstring)."""
    pipeline_only = {f.name for f in fields(cfg) if f.metadata.get("toml_only")}
    content = {"digits_classifier": sha256_file(CLASSIFIER_DIR / WEIGHTS)}
    content.update({name: sha256_file(getattr(cfg, name)) for name in ("inception_weights", "fid_reference")
                    if getattr(cfg, name)})
    return {"metric_version": METRIC_VERSION, "generator": sampler.describe(), "weights": sampler.net.fingerprint(),
            "vae": vae.fingerprint() if vae is not None else None, "seeds": seeds, "features": content,
            "store": plan_fingerprint(open_store(cfg.store).plan) if cfg.store else None,
            "protocol": {k: v for k, v in to_dict(cfg).items() if k not in NOT_IN_KEY | pipeline_only}}


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def lookup(key: str) -> tuple[dict, bytes | None] | None:
    """The cached result and picture for `key`, or None (absent or unreadable: measured again and overwritten)."""
    path = cache_dir() / f"{key}.json"
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    png = path.with_suffix(".png")
    return result, png.read_bytes() if png.is_file() else None


def store(key: str, result: dict, png: Path) -> None:
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    if png.is_file():
        atomic_write_bytes(folder / f"{key}.png", png.read_bytes())
    atomic_write_json(folder / f"{key}.json", result)
