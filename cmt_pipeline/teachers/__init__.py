"""Teachers: everything behind the denoiser seam D(x, sigma, class_labels) -> x0_hat (EDM form).

`load_teacher(spec)` accepts a directory (the project's EDM format, a diffusers backbone + scheduler: VP or
flow-matching, UNet or DiT, a published network converted by `cmt convert-teacher`, or a student folder written by
`cmt export`), a published network file read by TEACHER_FILES (NVlabs EDM/EDM2 .pkl snapshots, DiT / SiT .pt
checkpoints), `gmm:<preset>` for the closed-form mixtures, or `builtin`/`digits` for the shipped digits teacher;
optionally wrapped in classifier-free guidance. It is the one place folders and teacher files are told apart. A
teacher (generation, mid-training and evaluation's, guided or not; the mixture behind a ground truth) opens here;
what may also be a trained model.ckpt (a student, post-training's --init, `cmt inspect`) opens through models/io.py's
`open_network`, which adds model.ckpt files on top of this.
"""

from __future__ import annotations

from pathlib import Path

from ..paths import not_a_model
from ..errors import CMTError
from ..files import atomic_folder
from .base import quiet_libraries
from .base import Denoiser
from .diffusers_model import DiffusersDenoiser, find_layout
from .dit import load_dit_checkpoint
from .edm import PRECOND_FILE, EDMDenoiser, Precond, build_unet
from .edm2 import EDM2Precond  # registers EDM2's "Precond" for build_native
from .exported import is_export, load_export
from . import precond  # noqa: F401 - registers EDM's preconditionings for build_native
from .native import NATIVE_FILE, NativeDenoiser, load_snapshot
from .gmm import PRESETS as GMM_PRESETS
from .gmm import GMMDenoiser
from .guidance import GuidedDenoiser, guided

BUILTIN_DIGITS = Path(__file__).resolve().parent.parent / "assets" / "digits-teacher"
BUILTIN_SPECS = ("builtin", "digits", "builtin:digits")

__all__ = ["Denoiser", "EDMDenoiser", "Precond", "build_unet", "GMMDenoiser", "DiffusersDenoiser",
           "GuidedDenoiser", "NativeDenoiser", "EDM2Precond", "load_teacher", "convert_teacher", "is_teacher_file",
           "BUILTIN_DIGITS"]

# published network files by suffix -> their reader: path -> NativeDenoiser, reading the file as data only
# suffix -> reader; each reads its file as data (docs/hardening.md) and returns a NativeDenoiser. Keyword options
# (a .pt's flavour and architecture overrides) go to the reader that takes them.
TEACHER_FILES = {".pkl": load_snapshot, ".pt": load_dit_checkpoint, ".pth": load_dit_checkpoint}


def is_teacher_file(spec) -> bool:
    """Whether `spec` names a published network file (read by TEACHER_FILES, not a model.ckpt)."""
    return "://" not in str(spec) and Path(str(spec)).suffix.lower() in TEACHER_FILES and Path(str(spec)).is_file()


def convert_teacher(src, out, **options) -> NativeDenoiser:
    """Write the published network file `src` as a folder (teachers/native.py) that `--teacher OUT` loads
    without it, atomically; the folder is read back and must give the same teacher (fingerprint) as the file.
    `options` (flavour, arch) go to a DiT / SiT .pt reader; an NVlabs snapshot says everything itself."""
    src, out = Path(src), Path(out)
    if not is_teacher_file(src):
        raise CMTError(f"{src} is not a published network file ({', '.join(TEACHER_FILES)}); pass an NVlabs EDM or "
                       "EDM2 snapshot such as edm-cifar10-32x32-cond-vp.pkl, or a DiT-*.pt / SiT-*.pt checkpoint")
    options = {k: v for k, v in options.items() if v}
    if options and TEACHER_FILES[src.suffix.lower()] is not load_dit_checkpoint:
        raise CMTError(f"--{'/--'.join(options)} apply to DiT / SiT .pt checkpoints only; {src.name} records its "
                       "own architecture: drop them")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CMTError(f"--out {out} already exists; choose a new folder (nothing was written)")
    net = TEACHER_FILES[src.suffix.lower()](src, **options)
    with atomic_folder(out) as tmp:
        net.save(tmp)
        if NativeDenoiser.load(tmp).fingerprint() != net.fingerprint():
            raise CMTError(f"the folder written for {src} does not reproduce its network; nothing was written")
    return net


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
        if is_teacher_file(path):  # read as data; docs/hardening.md
            teacher = TEACHER_FILES[path.suffix.lower()](path)
        elif (path / PRECOND_FILE).exists():
            teacher = _load_or_explain(EDMDenoiser.load, path)
        elif is_export(path):  # a student folder written by `cmt export` (before NATIVE_FILE: a native one has it)
            teacher = _load_or_explain(load_export, path)
        elif (path / NATIVE_FILE).exists():  # a published network converted by `cmt convert-teacher`
            teacher = _load_or_explain(NativeDenoiser.load, path)
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
        with quiet_libraries():
            return loader(path)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CMTError(f"could not load the teacher in {path}: {str(e).splitlines()[0]} (docs/teachers.md lists "
                       "the supported models and the folder layouts)") from e
