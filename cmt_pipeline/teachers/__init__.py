"""Teachers: everything behind the denoiser seam D(x, sigma, class_labels) -> x0_hat (EDM form).

`load_teacher(spec)` accepts a directory (the project's EDM format, a diffusers backbone + scheduler: VP or
flow-matching, UNet or DiT, a converted published network, or a student folder written by `cmt export`), a DiT /
SiT `.pt` checkpoint (dit.py), `gmm:<preset>` for the closed-form mixtures, or `builtin`/`digits` for the shipped
digits teacher; optionally wrapped in classifier-free guidance. It is the one place folders are told apart;
models/io.py's `open_network` adds model.ckpt files on top, and everything that opens a network goes through that.
"""

from __future__ import annotations

from pathlib import Path

from ..paths import not_a_model
from ..utils import CMTError
from .base import Denoiser
from .diffusers_model import DiffusersDenoiser, find_layout
from .dit import is_dit_checkpoint, load_dit_checkpoint
from .edm import PRECOND_FILE, EDMDenoiser, Precond, build_unet
from .edm2 import EDM2Precond  # registers EDM2's "Precond" for build_native
from .exported import is_export, load_export
from .native import NATIVE_FILE, NativeDenoiser
from .gmm import PRESETS as GMM_PRESETS
from .gmm import GMMDenoiser
from .guidance import GuidedDenoiser, guided

BUILTIN_DIGITS = Path(__file__).resolve().parent.parent / "assets" / "digits-teacher"
BUILTIN_SPECS = ("builtin", "digits", "builtin:digits")

__all__ = ["Denoiser", "EDMDenoiser", "Precond", "build_unet", "GMMDenoiser", "DiffusersDenoiser",
           "GuidedDenoiser", "NativeDenoiser", "EDM2Precond", "load_teacher", "BUILTIN_DIGITS"]


def load_teacher(spec: str, device="cpu", guidance_scale: float = 1.0, null_label: int | None = None) -> Denoiser:
    """Resolve a teacher spec to an eval-mode denoiser on `device`, guided when guidance_scale != 1 (see
    guidance.py); raises CMTError with the fix on bad input."""
    spec = str(spec)
    if spec in BUILTIN_SPECS:
        if not (BUILTIN_DIGITS / PRECOND_FILE).exists():
            raise CMTError(f"the built-in digits teacher is missing at {BUILTIN_DIGITS}; reinstall the package "
                           "or train one with `cmt pretrain` and pass its folder as --teacher")
        teacher = EDMDenoiser.load(BUILTIN_DIGITS)
    elif spec.startswith("gmm:"):
        name = spec[4:]
        if name not in GMM_PRESETS:
            raise CMTError(f"unknown Gaussian-mixture preset {name!r}; choose one of: "
                           + ", ".join(f"gmm:{k}" for k in GMM_PRESETS))
        teacher = GMM_PRESETS[name]()
    else:
        path = Path(spec)
        if not path.exists():
            raise CMTError(f"teacher path {spec} does not exist; pass a model folder, gmm:<preset> or builtin")
        if is_dit_checkpoint(path):  # a facebookresearch/DiT or willisma/SiT .pt (teachers/dit.py)
            teacher = load_dit_checkpoint(path)
        elif (path / PRECOND_FILE).exists():
            teacher = _load_or_explain(EDMDenoiser.load, path)
        elif (path / NATIVE_FILE).exists():  # a published network converted by `cmt convert-teacher`
            teacher = _load_or_explain(NativeDenoiser.load, path)
        elif is_export(path):  # a student folder written by `cmt export`
            teacher = _load_or_explain(load_export, path)
        elif find_layout(path) is not None:
            teacher = _load_or_explain(DiffusersDenoiser.load, path)
        elif reason := not_a_model(path):
            raise CMTError(reason)
        else:
            raise CMTError(f"{spec} is not a teacher folder: expected {PRECOND_FILE} beside a diffusers model "
                           "(the project's format), a diffusers unet/ or transformer/ + scheduler/ pair "
                           "(see docs/teachers.md), or a folder written by `cmt export`")
    try:
        teacher = guided(teacher, guidance_scale, null_label)
    except ValueError as e:
        raise CMTError(str(e)) from e
    return teacher.to(device).eval().requires_grad_(False)


def _load_or_explain(loader, path: Path) -> Denoiser:
    try:
        return loader(path)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CMTError(f"could not load the teacher in {path}: {str(e).splitlines()[0]} (docs/teachers.md lists "
                       "the supported models and the folder layouts)") from e
