"""Network I/O: the layer through which the stages open a network that may be a model.ckpt, save and rebuild networks
(a teacher, never a model.ckpt, opens through teachers.load_teacher).

`open_network(spec)` takes whatever names a network and returns it with its kind and its record:

    model.ckpt               kind = the stage that wrote it (pretrain, mid-cm, mid-mf, post-ect, post-meanflow);
                             record = the checkpoint dict below; module = its EMA network
    a network folder         the project's EDM format, a diffusers unet/ or transformer/ + scheduler/ pair, or an
                             export by `cmt export` (teachers.load_teacher tells them apart); kind "folder"
    gmm:<preset>, builtin    the closed-form mixtures and the shipped digits teacher; kind "gmm" / "builtin"

`model.ckpt`, the one file format every training stage hands to the next, is a torch.save dict
    {format, kind, network, step, state_dict, ema_state_dict, config, data[, selected]}
where `network` is enough to rebuild the module without the config (`network_spec` / `build_network`), `kind`
names the stage that made it, `data` describes the training data (its fingerprint) and `selected`, in a
post-training run's best-<k>step.ckpt, the held-out evaluation it was kept for. `export_denoiser` writes
an EDM network as a network folder (EDMDenoiser.save). The trainer's own resume state is training/checkpoint.py's.
"""

from __future__ import annotations

import copy
import io
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import torch

from ..paths import not_a_model
from ..teachers import BUILTIN_SPECS, DiffusersDenoiser, EDMDenoiser, Precond, is_teacher_file, load_teacher
from ..teachers.native import NativeDenoiser
from ..errors import CMTError, first_line
from ..files import atomic_folder, atomic_write_bytes
from .consistency import BoundaryDenoiser
from .meanflow import MeanFlowStudent

FORMAT = "cmt-model-checkpoint/1"


class Network(NamedTuple):
    module: torch.nn.Module  # eval mode, no gradients, on the requested device
    kind: str  # a checkpoint's stage, else "folder", "gmm" or "builtin"
    record: dict | None  # a checkpoint's dict (config, data, step, network spec, weights); None for the others


def open_network(spec, device="cpu", ema: bool = True) -> Network:
    """The network named by `spec` (see module doc); a model.ckpt gives its EMA weights unless ema=False.
    CMTError with the fix on anything else."""
    spec = str(spec)
    if is_checkpoint(spec):
        ckpt = load_model(spec)
        module, kind = model_from_checkpoint(ckpt, ema), ckpt["kind"]
    else:
        ckpt, module = None, load_teacher(spec)
        kind = "builtin" if spec in BUILTIN_SPECS else "gmm" if spec.startswith("gmm:") else "folder"
    return Network(module.to(device).eval().requires_grad_(False), kind, ckpt)


def is_checkpoint(spec) -> bool:
    """Whether a spec names a model.ckpt (so a missing one is reported as a missing checkpoint) rather than a
    folder, a published network file (an NVlabs .pkl) or a teacher spec."""
    return not is_teacher_file(spec) and (Path(spec).is_file() or str(spec).endswith(".ckpt"))


def network_spec(model: torch.nn.Module) -> dict | None:
    """How to rebuild `model` from scratch (the state dicts then fill in the weights); None for a network class
    this file does not know, whose checkpoint then holds weights only (add the class here and in build_network)."""
    if isinstance(model, EDMDenoiser):
        # diffusers' "_" keys are bookkeeping (a from_pretrained model's _name_or_path is a Path, which
        # torch.load(weights_only=True) refuses); build_network drops them anyway
        unet = {k: v for k, v in model.backbone.config.items() if not k.startswith("_")}
        return {"class": "EDMDenoiser", "unet": unet, "precond": asdict(model.precond)}
    if isinstance(model, (DiffusersDenoiser, NativeDenoiser)):
        return model.spec()
    if not isinstance(model, (BoundaryDenoiser, MeanFlowStudent)):
        return None
    inner = network_spec(model.net)  # a student wrapper: rebuildable when the network it wraps is
    if inner is None:
        return None
    if isinstance(model, BoundaryDenoiser):
        return {"class": "BoundaryDenoiser", "net": inner, "precond": asdict(model.precond)}
    return {"class": "MeanFlowStudent", "net": inner, "gap_scale": model.gap_scale}


def build_network(spec: dict | None) -> torch.nn.Module:
    kind = spec and spec.get("class")
    if kind == "EDMDenoiser":
        from diffusers import UNet2DModel  # heavy; only when a network is built

        unet = UNet2DModel.from_config({k: v for k, v in spec["unet"].items() if not k.startswith("_")})
        return EDMDenoiser(unet, Precond(**spec["precond"]))
    if kind == "DiffusersDenoiser":
        return DiffusersDenoiser.from_spec(spec)
    if kind == "NativeDenoiser":
        return NativeDenoiser.from_spec(spec)
    if kind == "BoundaryDenoiser":
        p = spec["precond"]
        return BoundaryDenoiser(build_network(spec["net"]), p["boundary_sigma"], p["sigma_data"])
    if kind == "MeanFlowStudent":
        if "net" not in spec:  # before students of any denoiser, the EDM network's fields were stored flat
            raise CMTError("this MeanFlow checkpoint has the layout of an earlier cmt (one gap embedding, flat "
                           "network fields), which this version no longer reads; re-run its training stage")
        return MeanFlowStudent(build_network(spec["net"]), spec["gap_scale"])
    raise CMTError(f"the checkpoint does not say how to rebuild its network ({kind!r}); "
                   "build the module yourself and load ckpt['ema_state_dict'] into it")


def save_model(path, *, kind: str, model, ema_model, step: int, config: dict, data: dict,
               selected: dict | None = None) -> None:
    """Write model.ckpt atomically (see module doc); `selected` records why a run kept this step (--keep-best)."""
    ckpt = {"format": FORMAT, "kind": kind, "network": network_spec(model), "step": step,
            "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
            "ema_state_dict": {k: v.cpu() for k, v in ema_model.state_dict().items()},
            "config": config, "data": data, **({"selected": selected} if selected else {})}
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_model(path, kind: str | tuple[str, ...] | None = None) -> dict:
    """Read model.ckpt; CMTError when it is missing, unreadable, not a cmt checkpoint or of another kind."""
    path = Path(path)
    if reason := not_a_model(path):
        raise CMTError(reason)
    if not path.is_file():
        raise CMTError(f"checkpoint {path} does not exist; pass the model.ckpt a training run wrote")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        raise CMTError(f"cannot read checkpoint {path} (corrupt or not a torch file: {first_line(e, 120)}); "
                       "re-export it from its training run") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CMTError(f"{path} is not a cmt model checkpoint (format {FORMAT}); "
                       "pass the model.ckpt written by cmt pretrain / mid-train / post-train")
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds and ckpt["kind"] not in kinds:
        raise CMTError(f"{path} is a {ckpt['kind']!r} checkpoint, but {' or '.join(map(repr, kinds))} is needed here")
    return ckpt


def model_from_checkpoint(ckpt: dict, ema: bool = True) -> torch.nn.Module:
    """The network of a loaded checkpoint with its EMA (default) or raw weights, in eval mode."""
    model = build_network(ckpt["network"])
    model.load_state_dict(ckpt["ema_state_dict" if ema else "state_dict"])
    return model.eval()


def export_denoiser(model: EDMDenoiser, out_dir, dtype: str = "float32", vae=None) -> Path:
    """Write `model` as a network folder (EDMDenoiser.save), swapped into place when complete (files.atomic_folder);
    float16 halves the size and loads back as float32. A latent model's VAE (a LatentCodec) is saved in its vae/
    subfolder, so the folder is self-contained."""
    out_dir = Path(out_dir)
    with atomic_folder(out_dir) as tmp:
        copy.deepcopy(model).to(getattr(torch, dtype)).save(tmp)
        if vae is not None:
            vae.save(tmp / "vae")
    return out_dir
