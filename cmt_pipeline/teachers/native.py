"""Published preconditionings (EDM's VP / VE / iDDPM / EDM, EDM2's) around the native networks of networks/, behind
the denoiser seam.

Each subclass is built from exactly the keyword arguments its reference class takes (the `init_kwargs` a published
snapshot records), holds the backbone as `self.model` with the reference's parameter names, and is registered under
the reference class's name, so that `build_native(name, init_kwargs)` followed by `load_state_dict` rebuilds a
published network with no code from the snapshot. Labels at the seam are integers (one-hot inside, as the
reference networks take them).

On disk (`cmt convert-teacher`, `NativeDenoiser.save`): a folder holding
    model.safetensors   the state dict, reference parameter names
    cmt_native.json     {"format", "reference": class name, "init_kwargs": {...}, "source": {...}, "latents": ...}
where `source` says where the weights came from (snapshot file name and sha256), recorded in every store made with
it, and `latents` (None for pixel models) names the VAE and latent statistics a latent model expects.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch

from ..errors import CMTError
from ..networks.snapshot import read_snapshot
from .base import Denoiser

NATIVE_FILE = "cmt_native.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "cmt-native-network/1"
PRECONDS: dict[str, type["NativeDenoiser"]] = {}


def register(cls):
    """Class decorator: make `cls` buildable by its reference name (cls.reference)."""
    PRECONDS[cls.reference] = cls
    return cls


def build_native(reference: str, init_kwargs: dict) -> "NativeDenoiser":
    """A fresh (randomly initialised) native network of the reference class `reference` with its arguments."""
    cls = PRECONDS.get(reference)
    if cls is None:
        raise CMTError(f"no native network for {reference!r}; supported: {', '.join(sorted(PRECONDS))}")
    try:
        return cls(**init_kwargs)
    except (TypeError, ValueError) as e:  # an argument the class does not take, or a value it refuses
        raise CMTError(f"{reference} cannot be built from these arguments ({e}); the snapshot was made by a "
                       "version of the reference code this project does not know") from e


def load_snapshot(path: str | Path) -> "NativeDenoiser":
    """A published NVlabs EDM/EDM2 snapshot (networks/snapshot.py reads it as data) as a native network holding
    its weights, `source` naming the file and its sha256 and `latents` its encoder's statistics."""
    snap = read_snapshot(path)
    kwargs = snap.init_kwargs
    if snap.init_args and snap.reference in PRECONDS:  # bound to their names, as the folder format records them
        kwargs = {**inspect.signature(PRECONDS[snap.reference]).bind_partial(*snap.init_args).arguments, **kwargs}
    net = build_native(snap.reference, kwargs)
    try:
        net.load_state_dict(snap.weights, strict=True)
    except RuntimeError as e:
        raise CMTError(f"snapshot {Path(path).name}: its weights do not fit this project's {snap.reference} built "
                       f"from its arguments ({' '.join(str(e).split())[:300]})") from None
    net.source, net.latents = snap.source, snap.latents
    return net


class NativeDenoiser(Denoiser):
    """Base class: subclasses set `reference` (the published class name), call super().__init__(**their arguments),
    build self.model, set `shape` and `num_classes`, and define forward(x, sigma, class_labels=None)."""

    reference: str = ""

    def __init__(self, **init_kwargs):
        super().__init__()
        self.init_kwargs = init_kwargs
        self.source: dict = {}  # where the weights came from, e.g. {"snapshot": name, "sha256": ...}
        self.latents: dict | None = None  # a latent model's VAE and latent statistics (EDM2's encoder record)

    def one_hot(self, class_labels, x: torch.Tensor) -> torch.Tensor | None:
        """Integer labels at the seam -> the one-hot rows the reference networks take (None when unconditional)."""
        labels = self.check_labels(class_labels, x.shape[0])
        if labels is None:
            return None
        return torch.nn.functional.one_hot(labels, self.num_classes).to(torch.float32)

    def describe(self) -> dict:
        return {**super().describe(), "class": self.reference, "init_kwargs": self.init_kwargs,
                "source": self.source, "latents": self.latents, "parameters": sum(p.numel() for p in self.parameters())}

    def spec(self) -> dict:
        """Enough to rebuild this module (weights aside): checkpoints of students made from it store this."""
        return {"class": "NativeDenoiser", "reference": self.reference, "init_kwargs": self.init_kwargs,
                "source": self.source, "latents": self.latents}

    @staticmethod
    def from_spec(spec: dict) -> "NativeDenoiser":
        net = build_native(spec["reference"], spec["init_kwargs"])
        net.source = dict(spec.get("source") or {})
        net.latents = spec.get("latents")
        return net

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, path / WEIGHTS_FILE)
        meta = {"format": FORMAT, **{k: v for k, v in self.spec().items() if k != "class"}}
        (path / NATIVE_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "NativeDenoiser":
        from safetensors.torch import load_file

        path = Path(path)
        meta = json.loads((path / NATIVE_FILE).read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path / NATIVE_FILE} has format {meta.get('format')!r}, expected {FORMAT}")
        net = cls.from_spec(meta)
        net.load_state_dict(load_file(path / WEIGHTS_FILE))
        return net
