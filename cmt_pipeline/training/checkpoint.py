"""Checkpoints, two kinds.

1. Training state (for resuming): `accelerator.save_state` folders run/checkpoints/step-NNNNNNN, written into
   a temporary folder and renamed when complete; run/checkpoints/latest is a one-line file naming the newest
   complete one, replaced atomically. A crash mid-save leaves only a `.tmp-*` folder that nothing reads.
2. The final model, `model.ckpt`, the one format every stage hands to the next: a torch.save dict
       {format, kind, network, step, state_dict, ema_state_dict, config, data}
   where `network` is enough to rebuild the module without the config (see `network_spec`), `kind` names the
   stage that made it and `data` describes the training data (its fingerprint). `export_denoiser` writes the
   EMA network in the teacher/student folder format (EDMDenoiser.save), loadable by `load_teacher`.
"""

from __future__ import annotations

import copy
import io
import os
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path

import torch

from ..teachers.edm import EDMDenoiser, Precond
from ..paths import not_a_model
from ..utils import CMTError, atomic_write_bytes

FORMAT = "cmt-model-checkpoint/1"
LATEST = "latest"


# ---- training state -------------------------------------------------------------------------------------

def save_training_state(accelerator, ckpt_dir: Path, step: int, keep: int) -> Path:
    """Collective: every process calls it. Returns the finished checkpoint folder."""
    name = f"step-{step:07d}"
    tmp, final = ckpt_dir / f".tmp-{name}", ckpt_dir / name
    if accelerator.is_main_process:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_bytes(ckpt_dir / LATEST, (name + "\n").encode())
        for old in sorted(ckpt_dir.glob("step-*"))[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(resume: str, ckpt_dir: Path) -> Path:
    """`latest` -> the folder named by ckpt_dir/latest; anything else must be a checkpoint folder."""
    if resume == LATEST:
        pointer = ckpt_dir / LATEST
        if not pointer.exists():
            raise CMTError(f"--resume latest: no checkpoint in {ckpt_dir}; drop --resume to start a new run")
        path = ckpt_dir / pointer.read_text().strip()
    else:
        path = Path(resume)
    if not path.is_dir() or not (any(path.glob("model*.safetensors")) or any(path.glob("pytorch_model*.bin"))):
        raise CMTError(f"--resume {resume}: {path} is not a training checkpoint folder "
                       "(expected run/checkpoints/step-NNNNNNN as written by the training loop)")
    return path


# ---- the final model ------------------------------------------------------------------------------------

def network_spec(model: torch.nn.Module) -> dict | None:
    """How to rebuild `model` from scratch (the state dicts then fill in the weights); None for a network class
    this file does not know, whose checkpoint then holds weights only (add the class here and in build_network)."""
    from ..models import BoundaryDenoiser, MeanFlowStudent
    from ..teachers import DiffusersDenoiser

    if isinstance(model, EDMDenoiser):
        # diffusers' "_" keys are bookkeeping (a from_pretrained model's _name_or_path is a Path, which
        # torch.load(weights_only=True) refuses); build_network drops them anyway
        unet = {k: v for k, v in model.backbone.config.items() if not k.startswith("_")}
        return {"class": "EDMDenoiser", "unet": unet, "precond": asdict(model.precond)}
    if isinstance(model, DiffusersDenoiser):
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
    from ..models import BoundaryDenoiser, MeanFlowStudent
    from ..teachers import DiffusersDenoiser

    kind = spec and spec.get("class")
    if kind == "EDMDenoiser":
        from diffusers import UNet2DModel

        unet = UNet2DModel.from_config({k: v for k, v in spec["unet"].items() if not k.startswith("_")})
        return EDMDenoiser(unet, Precond(**spec["precond"]))
    if kind == "DiffusersDenoiser":
        return DiffusersDenoiser.from_spec(spec)
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


def save_model(path, *, kind: str, model, ema_model, step: int, config: dict, data: dict) -> None:
    """Write model.ckpt atomically (see module doc)."""
    ckpt = {"format": FORMAT, "kind": kind, "network": network_spec(model), "step": step,
            "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
            "ema_state_dict": {k: v.cpu() for k, v in ema_model.state_dict().items()},
            "config": config, "data": data}
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
        raise CMTError(f"cannot read checkpoint {path} (corrupt or not a torch file: "
                       f"{str(e).splitlines()[0][:120]}); re-export it from its training run") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CMTError(f"{path} is not a cmt model checkpoint (format {FORMAT}); "
                       "pass the model.ckpt written by cmt pretrain / mid-train / post-train")
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds and ckpt["kind"] not in kinds:
        raise CMTError(f"{path} is a {ckpt['kind']!r} checkpoint, but {' or '.join(map(repr, kinds))} is needed here")
    return ckpt


def is_checkpoint(spec) -> bool:
    """Whether a model spec names a model.ckpt (so a missing one is reported as a missing checkpoint) rather
    than a folder or a teacher spec."""
    return Path(spec).is_file() or str(spec).endswith(".ckpt")


def model_from_checkpoint(ckpt: dict, ema: bool = True) -> torch.nn.Module:
    """The network of a loaded checkpoint with its EMA (default) or raw weights, in eval mode."""
    model = build_network(ckpt["network"])
    model.load_state_dict(ckpt["ema_state_dict" if ema else "state_dict"])
    return model.eval()


def export_denoiser(model: EDMDenoiser, out_dir, dtype: str = "float32", vae=None) -> Path:
    """Write `model` as a teacher/student folder (EDMDenoiser.save), built in a temporary folder and renamed
    into place when complete; float16 halves the size and loads back as float32. A latent model's VAE (a
    LatentCodec) is saved in its vae/ subfolder, so the folder is self-contained."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    copy.deepcopy(model).to(getattr(torch, dtype)).save(tmp)
    if vae is not None:
        vae.save(tmp / "vae")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
