"""Configuration: one dataclass per stage, loaded from a section of configs/*.toml, overridable from the CLI,
and written next to every output so each dataset and checkpoint says how it was made."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from .utils import CMTError


@dataclass
class GenerateConfig:
    """`cmt generate-trajectories`: the teacher's ODE solve from seeded prior noise, stored as shards."""

    teacher: str = "builtin"  # a model folder, gmm:<preset>, or builtin (the shipped digits teacher)
    out: str = "runs/trajectories"
    num_samples: int = 1024
    solver: str = "dpm3"  # euler | heun | dpm2 | dpm3
    steps: int = 16
    grid: str = "logsnr"  # logsnr (paper) | karras
    sigma_max: float = 80.0
    sigma_min: float = 0.002
    format: str = "zarr"  # zarr | wds
    dtype: str = "float16"  # storage dtype of traj and x0 (prior is always float32)
    batch_size: int = 256
    shard_size: int = 1024
    seed: int = 0
    class_labels: str = "random"  # random | none | an integer class for every sample
    device: str = "auto"


def load_config(cls, path: str | Path | None = None, section: str | None = None, **overrides):
    """Build `cls` from defaults, then the TOML table `section` of `path`, then non-None overrides."""
    values = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise CMTError(f"cannot read config {path}: {e}") from e
        values = data.get(section, {}) if section else data
    values.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise CMTError(f"unknown {cls.__name__} option(s) {unknown} in {path or 'overrides'}; "
                       f"known: {sorted(names)}")
    return cls(**values)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
