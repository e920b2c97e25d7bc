"""Reads NVlabs EDM / EDM2 network snapshots (network-snapshot-*.pkl, edm-*.pkl, edm2-*.pkl) without running them.

Those files are pickles in the reference's torch_utils.persistence format: every network object is a call
`_reconstruct_persistent_obj(meta)` whose meta holds the Python source of the module that defined it
(`module_src`), its class name and its state (`_init_kwargs`, `_parameters`, `_buffers`, `_modules`, ...).
`pickle.load` would exec that source. Here an unpickler resolves only an allowlist of globals: the persistence
call (turned into a plain `Record` of class name and state, for the published class names only; `module_src` is
never compiled), the torch functions that rebuild tensors (their storage bytes decoded by
torch.load(weights_only=True)), torch's module containers (as records), and the dict/numpy types a snapshot's
bookkeeping uses. Anything else is refused with one line before it is called. `read_snapshot` returns the
denoiser record's class name, constructor arguments and weights; teachers/native.py (`load_snapshot`) builds this
project's own implementation from them and loads the weights with load_state_dict(strict=True).
"""

from __future__ import annotations

import collections
import io
import pickle
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..errors import CMTError
from ..files import sha256_file

FORMAT = "NVlabs torch_utils.persistence pickle"
PERSISTENCE_VERSION = 6  # torch_utils.persistence._version of both NVlabs/edm and NVlabs/edm2

# class names a published snapshot's records may carry (NVlabs/edm training/networks.py, loss.py, augment.py;
# NVlabs/edm2 training/networks_edm2.py, training_loop.py, encoders.py)
PRECONDS = ("VPPrecond", "VEPrecond", "iDDPMPrecond", "EDMPrecond", "Precond")
NETWORKS = PRECONDS + ("SongUNet", "DhariwalUNet", "UNetBlock", "Conv2d", "Linear", "GroupNorm",
                       "PositionalEmbedding", "FourierEmbedding", "UNet", "Block", "MPConv", "MPFourier")
CONTAINERS = ("ModuleDict", "ModuleList", "Sequential")  # torch.nn.modules.container, pickled without persistence
OTHERS = ("VPLoss", "VELoss", "EDMLoss", "EDM2Loss", "AugmentPipe", "Encoder", "StandardRGBEncoder",
          "StabilityVAEEncoder")  # read, never built: what a snapshot keeps beside its network
CLASSES = NETWORKS + OTHERS

# StabilityVAEEncoder's defaults (NVlabs/edm2 training/encoders.py): EDM2's training sets none of them, so its
# snapshots record no arguments; the recorded scale and bias are checked against them
VAE_DEFAULTS = {"vae_name": "stabilityai/sd-vae-ft-mse", "raw_mean": [5.81, 3.25, 0.12, -2.15],
                "raw_std": [4.17, 4.62, 3.71, 3.28], "final_mean": 0.0, "final_std": 0.5}


class Record:
    """A persistent object or module container as data: its class name and pickled state, nothing executable."""

    def __init__(self, name: str, state: dict):
        self.name, self.state = name, state

    def __setstate__(self, state):  # a container's state arrives by pickle's BUILD
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.name} has a state of type {type(state).__name__}, not a dict")
        self.state = state


def _persistent_record(meta) -> Record:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise pickle.UnpicklingError("a persistence record without a class and a state")
    name = meta.get("class_name")
    if name not in CLASSES:
        raise _Refused(f"refused class {name!r} (not a published EDM/EDM2 class)")
    if meta.get("version") != PERSISTENCE_VERSION:
        raise _Refused(f"{name} record of persistence version {meta.get('version')!r} (this reader knows "
                       f"version {PERSISTENCE_VERSION}, as NVlabs/edm and NVlabs/edm2 write it)")
    return Record(name, meta["state"])  # meta["module_src"] is dropped unread


def _container(name: str):
    """A stand-in class for torch.nn.<name>: pickle's NEWOBJ makes a Record of it (without calling __init__) and
    BUILD fills its state."""
    return type(name, (Record,), {"name": name, "state": None})


def _storage(data: bytes):
    storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(storage, torch.TypedStorage):
        raise pickle.UnpicklingError(f"a tensor storage record holds a {type(storage).__name__}")
    return storage


def _tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None) -> torch.Tensor:
    if not isinstance(storage, torch.TypedStorage):
        raise pickle.UnpicklingError("a tensor record without a storage")
    return torch._utils._rebuild_tensor(storage, offset, size, stride)


def _parameter(data, requires_grad=False, hooks=None) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("a parameter record without a tensor")
    return data


def _multiarray():
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core import multiarray
    return multiarray


_MULTIARRAY = _multiarray()
# (module, name) -> what it resolves to; a snapshot's pickle may name nothing else
GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
    ("torch._utils", "_rebuild_tensor_v2"): _tensor,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch.storage", "_load_from_bytes"): _storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): dict,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    **{(module, name): getattr(_MULTIARRAY, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
       for name in ("scalar", "_reconstruct")},
    **{("torch.nn.modules.container", name): _container(name) for name in CONTAINERS},
}
TENSOR_RECORDS = (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
                  ("torch.storage", "_load_from_bytes"))  # read_latents skips them


def _skip(*args):
    return None


class _Refused(CMTError):
    """Something the snapshot names that this reader will not resolve."""


class _Unpickler(pickle._Unpickler):
    """pickle's Python implementation: its memo is a dict, where the C one's is an array that one tampered
    LONG_BINPUT index can grow to tens of gigabytes. With tensors=False tensor records are read as None."""

    def __init__(self, file, tensors: bool = True):
        super().__init__(file)
        self.globals = GLOBALS if tensors else {**GLOBALS, **dict.fromkeys(TENSOR_RECORDS, _skip)}

    def find_class(self, module, name):
        if (module, name) not in self.globals:
            raise _Refused(f"refused global {module}.{name} (not a published EDM/EDM2 class or a tensor record)")
        return self.globals[module, name]

    def persistent_load(self, pid):
        raise _Refused("refused a persistent id (NVlabs snapshots are plain pickles)")


def read_records(path: str | Path, tensors: bool = True) -> tuple[object, str]:
    """(the snapshot's top-level object with records in place of objects, its sha256); CMTError naming the file
    when it is refused, truncated or corrupt. tensors=False leaves tensors undecoded (None)."""
    path = Path(path)
    try:
        digest = sha256_file(path)
    except OSError as e:
        raise CMTError(f"cannot read snapshot {path}: {e.strerror}") from e
    try:
        with open(path, "rb") as f:
            with warnings.catch_warnings():  # numpy's and torch's notices about odd (tampered) records
                warnings.simplefilter("ignore")
                top = _Unpickler(f, tensors).load()
    except _Refused as e:
        raise CMTError(f"snapshot {path.name}: {e}; only NVlabs EDM/EDM2 network snapshots are read "
                       "(docs/hardening.md)") from None
    except Exception as e:  # a damaged pickle raises anything from EOFError to MemoryError
        raise CMTError(f"snapshot {path.name} is truncated or corrupt ({type(e).__name__}: "
                       f"{(str(e).splitlines() or [''])[0][:120]}; sha256 {digest[:16]}...); download it again") \
            from None
    return top, digest


def network_record(top, name: str) -> tuple[Record, Record | None]:
    """(the denoiser record: a snapshot's 'ema' entry or the whole pickle, its encoder record or None)."""
    if isinstance(top, Record):
        return top, None
    net = top.get("ema") if isinstance(top, dict) else None
    if not isinstance(net, Record) or net.name not in PRECONDS:
        found = net.name if isinstance(net, Record) else type(net).__name__ if net is not None else "nothing"
        raise CMTError(f"snapshot {name}: its 'ema' entry is {found}, not a denoiser ({', '.join(PRECONDS)}); pass "
                       "a network snapshot written by NVlabs/edm or NVlabs/edm2 training")
    encoder = top.get("encoder")
    return net, encoder if isinstance(encoder, Record) else None


def state_dict(record: Record, name: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """The record tree's parameters and persistent buffers under their module paths, as state_dict() names them."""
    if record.name not in NETWORKS + CONTAINERS:
        raise CMTError(f"snapshot {name}: a {record.name} record sits inside the network at {prefix or 'its root'}")
    state, out = record.state or {}, {}
    skip = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for key, value in (state.get(group) or {}).items():
            if value is None or key in skip:
                continue
            if not isinstance(value, torch.Tensor):
                raise CMTError(f"snapshot {name}: {prefix}{key} is a {type(value).__name__}, not a tensor")
            out[prefix + key] = value
    for key, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, Record):
            raise CMTError(f"snapshot {name}: submodule {prefix}{key} is a {type(child).__name__}, not a record")
        out.update(state_dict(child, name, f"{prefix}{key}."))
    return out


def plain(value, where: str):
    """Constructor arguments as JSON values (tuples as lists, numpy scalars as numbers), so that a snapshot and
    its converted folder describe the same teacher; anything else is refused."""
    if isinstance(value, dict):
        return {str(k): plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, where) for v in value]
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise CMTError(f"{where} is a {type(value).__name__}, which no published network takes")


def init_arguments(record: Record, name: str) -> tuple[list, dict]:
    """The record's constructor arguments (positional, keyword) as JSON values."""
    args, kwargs = record.state.get("_init_args") or (), record.state.get("_init_kwargs")
    if not isinstance(kwargs, dict) or not isinstance(args, (tuple, list)):
        raise CMTError(f"snapshot {name}: the {record.name} record holds no constructor arguments "
                       "(it was written with _record_init_args = False); it cannot be rebuilt")
    where = f"snapshot {name}: constructor argument {record.name}"
    return plain(args, where), plain(kwargs, where)


def latents(encoder: Record | None, name: str) -> dict | None:
    """An EDM2 StabilityVAEEncoder record -> the VAE and latent statistics the network's inputs are in (its
    arguments over the class defaults, checked against the scale and bias it recorded); None for pixel models."""
    if encoder is None or encoder.name != "StabilityVAEEncoder":
        return None
    args, kwargs = init_arguments(encoder, name)
    stats = {**VAE_DEFAULTS, **dict(zip(VAE_DEFAULTS, args)), **kwargs}
    scale = np.float32(stats["final_std"]) / np.asarray(stats["raw_std"], dtype=np.float32)
    bias = np.float32(stats["final_mean"]) - np.asarray(stats["raw_mean"], dtype=np.float32) * scale
    recorded = [np.asarray(encoder.state.get(k), dtype=np.float32) for k in ("scale", "bias")]
    if any(r.shape != e.shape or not np.allclose(r, e, rtol=1e-5, atol=1e-6) for r, e in zip(recorded, (scale, bias))):
        raise CMTError(f"snapshot {name}: its encoder's scale and bias do not follow from its arguments "
                       f"{stats}; the encoder record was edited or written by an unknown version of NVlabs/edm2")
    return {k: stats[k] for k in VAE_DEFAULTS}


class Snapshot(NamedTuple):
    """A snapshot's denoiser as data: what teachers/native.py needs to rebuild it with no code from the file."""

    reference: str  # the preconditioning's class name (EDMPrecond, Precond, ...)
    init_args: list
    init_kwargs: dict
    weights: dict[str, torch.Tensor]  # state_dict() names
    source: dict  # file name, sha256, format, preconditioning, architecture
    latents: dict | None  # EDM2's encoder statistics; None for pixel models


def read_snapshot(path: str | Path) -> Snapshot:
    """The snapshot's denoiser record as data; CMTError on anything that cannot be read safely."""
    path = Path(path)
    top, digest = read_records(path)
    record, encoder = network_record(top, path.name)
    args, kwargs = init_arguments(record, path.name)
    children = record.state.get("_modules") or {}
    backbone = next((c.name for k, c in children.items() if k in ("model", "unet") and isinstance(c, Record)), None)
    source = {"snapshot": path.name, "sha256": digest, "format": FORMAT, "preconditioning": record.name,
              "architecture": backbone}
    return Snapshot(record.name, args, kwargs, state_dict(record, path.name), source, latents(encoder, path.name))


def read_latents(path: str | Path) -> dict | None:
    """Only the snapshot's encoder statistics (for latents.py, before or without loading the network): its tensors
    are skipped, not decoded."""
    top, _ = read_records(path, tensors=False)
    return latents(network_record(top, Path(path).name)[1], Path(path).name)
