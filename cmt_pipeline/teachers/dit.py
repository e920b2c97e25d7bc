"""DiT (facebookresearch/DiT) and SiT (willisma/SiT) `.pt` checkpoints behind the denoiser seam, read safely.

Reading (`load_dit_checkpoint`): torch.load(weights_only=True) only, so a file cannot run code; a bare state dict
(the published DiT-XL-2-256x256.pt, SiT-XL-2-256x256.pt) or a training checkpoint {"model", "ema", "opt", "args"}
(the EMA weights are taken). The architecture is read from the tensor shapes (`infer_arch`); the heads, which no
shape shows, from the published configs (hidden 1152 / 1024 -> 16 heads, else hidden / 64). The family cannot be
read from the weights: it comes from the `flavour` argument, the file name (DiT-* / SiT-*) or a training
checkpoint's args.model, and a file that says neither is refused.

Parametrisations, each the reference's own convention:
  DiT  VP, epsilon, DiT's linear betas 1e-4..0.02 over 1000 steps (float64, diffusion/gaussian_diffusion.py):
       sigma_t = sqrt((1 - a_t) / a_t), input x / sqrt(1 + sigma^2), D = x - sigma * eps_hat; diffusers_model's
       VPParametrisation (fractional timesteps between the grid's sigmas, clamped to its ends).
  SiT  transport's Linear path, velocity: x_t = t x1 + (1 - t) x0 (x1 data, x0 noise), v = x1 - x0, model time t
       in [0, 1] unscaled. Dividing by t, x_t / t = x1 + sigma x0 with sigma = (1 - t) / t, so for the EDM state
       x = x1 + sigma eps: t = 1 / (1 + sigma), x_t = x / (1 + sigma), and x1 = x_t + (1 - t) v_hat is D.
       Exact for every sigma > 0 (`SiTLinearPath`).
A learned-variance output (learn_sigma) is cut to its first C channels, as both references do.

On disk: NativeDenoiser's folder (cmt_native.json with reference "DiT" or "SiT", model.safetensors holding the
reference's parameter names), which load_teacher reads; `convert_dit_checkpoint` writes it. A latent model (4 input
channels) records in `latents` the SD-VAE it expects; pass that autoencoder's folder as --vae.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import pickle
import re
from pathlib import Path

import torch

from ..errors import CMTError
from ..networks.dit import DiT
from .base import sigma_column
from .diffusers_model import VPParametrisation
from .native import NativeDenoiser, register

SUFFIXES = (".pt", ".pth")
FLAVOURS = ("DiT", "SiT")
HEADS = {1152: 16, 1024: 16}  # DiT-XL, DiT-L (B: 768 -> 12 and S: 384 -> 6 follow hidden / 64)
SD_VAE = {"vae": "stabilityai/sd-vae-ft-mse or stabilityai/sd-vae-ft-ema (diffusers AutoencoderKL; pass its "
                 "folder as --vae)", "scaling_factor": 0.18215, "downsample": 8}
REQUIRED = ("x_embedder.proj.weight", "pos_embed", "t_embedder.mlp.0.weight", "y_embedder.embedding_table.weight",
            "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight", "final_layer.linear.weight")
FIX = ("pass a DiT-*.pt / SiT-*.pt from facebookresearch/DiT or willisma/SiT, or one of their training "
       "checkpoints ({'model', 'ema', 'opt', 'args'})")


def dit_betas(steps: int = 1000) -> torch.Tensor:
    """DiT's "linear" schedule (get_named_beta_schedule), in float64."""
    scale = 1000 / steps
    return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)


class SiTLinearPath(torch.nn.Module):
    """SiT's Linear velocity path in EDM form (module doc); same methods as diffusers_model's parametrisations."""

    def model_input(self, x, sig):
        return x / (1 + sig)

    def timestep(self, sig):
        return (1 / (1 + sig)).flatten()

    def denoise(self, x, sig, out):
        return x / (1 + sig) + sig / (1 + sig) * out

    def describe(self) -> dict:
        return {"parametrisation": "sit-linear-velocity"}


class DiTFamily(NativeDenoiser):
    """The DiT backbone (networks/dit.py) built from the reference constructor's arguments (defaults filled in, so
    the record is complete), with a subclass's `param` mapping it onto EDM form."""

    def __init__(self, **init_kwargs):
        bound = inspect.signature(DiT).bind(**init_kwargs)  # TypeError on an argument DiT does not take
        bound.apply_defaults()
        super().__init__(**bound.arguments)
        kw = self.init_kwargs
        self.model = DiT(**kw)
        self.shape = (kw["in_channels"], kw["input_size"], kw["input_size"])
        self.num_classes = kw["num_classes"]
        self.null_label = kw["num_classes"] if kw["class_dropout_prob"] > 0 else None  # the label-dropout row
        self.latents = dict(SD_VAE, image_size=kw["input_size"] * 8) if kw["in_channels"] == 4 else None

    def forward(self, x, sigma, class_labels=None):
        sig, xf = sigma_column(sigma, x).float(), x.float()
        labels = self.check_labels(class_labels, x.shape[0])
        if labels is None:  # a model with no classes has only the null row
            labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        out = self.model(self.param.model_input(xf, sig), self.param.timestep(sig), labels)
        return self.param.denoise(xf, sig, out[:, : x.shape[1]].float()).to(x.dtype)

    def describe(self) -> dict:
        return {**super().describe(), "null_label": self.null_label, **self.param.describe()}


@register
class DiTDenoiser(DiTFamily):
    reference = "DiT"

    def __init__(self, **init_kwargs):
        super().__init__(**init_kwargs)
        self.param = VPParametrisation("epsilon", torch.cumprod(1 - dit_betas(), 0))


@register
class SiTDenoiser(DiTFamily):
    reference = "SiT"

    def __init__(self, **init_kwargs):
        super().__init__(**init_kwargs)
        self.param = SiTLinearPath()


def is_dit_checkpoint(path) -> bool:
    """Whether `path` is a file this reader owns (a .pt / .pth); its content is checked by load_dit_checkpoint."""
    path = Path(path)
    return path.suffix.lower() in SUFFIXES and path.is_file()


def read_checkpoint(path: Path) -> tuple[dict, dict]:
    """(state dict, training args or {}) of a DiT / SiT .pt, loaded with weights_only=True."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # training checkpoints' "args"
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        refused = re.search(r"[^\n]*GLOBAL[^\n]*", str(e)) if isinstance(e, pickle.UnpicklingError) else None
        if refused:  # an object that is not a tensor or a plain container: unpickling it could run code
            raise CMTError(f"{path} holds objects that safe loading (torch.load weights_only=True) refuses "
                           f"({refused.group(0).strip()[:160]}); re-save its weights with "
                           "torch.save(model.state_dict(), PATH) and pass that file") from e
        raise CMTError(f"cannot read {path} as a torch checkpoint ({str(e).splitlines()[0][:120]}); {FIX}") from e
    args = {}
    if isinstance(obj, dict) and ("ema" in obj or "model" in obj):
        args = obj.get("args")
        args = vars(args) if isinstance(args, argparse.Namespace) else args if isinstance(args, dict) else {}
        obj = obj["ema"] if "ema" in obj else obj["model"]
    if not (isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise CMTError(f"{path} is not a state dict of tensors nor a training checkpoint holding one; {FIX}")
    if all(k.startswith("module.") for k in obj):  # saved from a DistributedDataParallel wrapper
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj, args


def infer_arch(state: dict, source: str = "the checkpoint") -> dict:
    """DiT's constructor arguments from a state dict's shapes. class_dropout_prob is taken as the references' 0.1,
    so the label table holds num_classes + 1 rows (load_dit_checkpoint recounts for an override of 0)."""
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CMTError(f"{source} is not a DiT / SiT state dict (no {', '.join(missing[:3])}); {FIX}")
    hidden, in_channels, patch, _ = state["x_embedder.proj.weight"].shape
    tokens = state["pos_embed"].shape[1]
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    out_channels = state["final_layer.linear.weight"].shape[0] // (patch * patch)
    return {"input_size": round(tokens**0.5) * patch, "patch_size": patch, "in_channels": in_channels,
            "hidden_size": hidden, "depth": depth,
            "num_heads": HEADS.get(hidden, max(hidden // 64, 1)),
            "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / hidden,
            "class_dropout_prob": 0.1, "num_classes": state["y_embedder.embedding_table.weight"].shape[0] - 1,
            "learn_sigma": out_channels == 2 * in_channels}


def family(path: Path, args: dict, flavour: str | None) -> str:
    """"DiT" or "SiT": the explicit flavour, else the file name, else a training checkpoint's args.model."""
    if flavour:
        if flavour.lower() not in ("dit", "sit"):
            raise CMTError(f"unknown flavour {flavour!r}; pass dit (diffusion, epsilon) or sit (linear flow)")
        return FLAVOURS[flavour.lower() == "sit"]
    for hint in (path.name, args.get("model")):
        m = re.match(r"(dit|sit)[-_/]", str(hint or ""), re.IGNORECASE)
        if m:
            return FLAVOURS[m.group(1).lower() == "sit"]
    raise CMTError(f"{path.name} does not say whether it is a DiT (diffusion) or a SiT (linear flow) model; "
                   f"rename it DiT-*.pt / SiT-*.pt, or convert it: python -m cmt_pipeline.teachers.dit {path} "
                   "--flavour dit|sit --out DIR")


def check_sit_args(args: dict, path: Path) -> None:
    """Refuse a SiT trained on another path or prediction than Linear / velocity (train.py's defaults)."""
    path_type, prediction = args.get("path_type", "Linear"), args.get("prediction", "velocity")
    if (path_type, prediction) != ("Linear", "velocity"):
        raise CMTError(f"{path.name} was trained with path_type {path_type} and prediction {prediction}; only "
                       "SiT's Linear path with velocity prediction (the published models) is supported")


def load_dit_checkpoint(path, arch: dict | None = None, flavour: str | None = None) -> DiTFamily:
    """A DiT / SiT checkpoint as a denoiser (module doc). `arch` overrides inferred constructor arguments (e.g.
    {"num_heads": 8}); `flavour` ("dit" / "sit") overrides the file name. CMTError naming the fix otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CMTError(f"checkpoint {path} does not exist; {FIX}")
    state, args = read_checkpoint(path)
    kind = family(path, args, flavour)
    if kind == "SiT":
        check_sit_args(args, path)
    kwargs, arch = infer_arch(state, path.name), dict(arch or {})
    unknown = set(arch) - set(kwargs)
    if unknown:
        raise CMTError(f"unknown architecture override(s) {', '.join(sorted(unknown))}; choose from "
                       + ", ".join(kwargs))
    rows = state["y_embedder.embedding_table.weight"].shape[0]
    if args.get("num_classes") == rows:  # trained without label dropout: no null row
        kwargs["class_dropout_prob"] = 0.0
    kwargs.update(arch)
    if "num_classes" not in arch:
        kwargs["num_classes"] = rows - (kwargs["class_dropout_prob"] > 0)
    if kwargs["hidden_size"] % kwargs["num_heads"]:
        raise CMTError(f"hidden size {kwargs['hidden_size']} is not divisible into {kwargs['num_heads']} heads; "
                       "pass the model's num_heads as an architecture override")
    net = {"DiT": DiTDenoiser, "SiT": SiTDenoiser}[kind](**kwargs)
    try:
        net.model.load_state_dict(state)
    except RuntimeError as e:
        raise CMTError(f"{path.name} does not fit the {kind} architecture inferred or overridden "
                       f"({' '.join(str(e).split())[:300]}); correct the architecture overrides") from e
    net.source = {"checkpoint": path.name, "sha256": file_sha256(path), "flavour": kind}
    return net


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def convert_dit_checkpoint(path, out, arch: dict | None = None, flavour: str | None = None) -> Path:
    """Write a DiT / SiT checkpoint as a teacher folder (NativeDenoiser's format), swapped in when complete."""
    from ..utils import atomic_folder

    net = load_dit_checkpoint(path, arch, flavour)
    with atomic_folder(Path(out)) as tmp:
        net.save(tmp)
    return Path(out)


def parse_arch(text: str) -> dict:
    """'num_heads=8,class_dropout_prob=0' -> {"num_heads": 8, "class_dropout_prob": 0.0} (numbers, true/false)."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise CMTError(f"architecture override {item!r} is not KEY=VALUE; e.g. num_heads=16")
        low = value.strip().lower()
        out[key.strip()] = low == "true" if low in ("true", "false") else float(low) if "." in low else int(low)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m cmt_pipeline.teachers.dit",
                                description="Convert a DiT / SiT .pt checkpoint into a cmt teacher folder.")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="the teacher folder to write")
    p.add_argument("--flavour", choices=("dit", "sit"), help="the family, when the file name does not say")
    p.add_argument("--arch", default="", help="constructor overrides, e.g. num_heads=16,class_dropout_prob=0")
    a = p.parse_args(argv)
    try:
        out = convert_dit_checkpoint(a.checkpoint, a.out, parse_arch(a.arch), a.flavour)
    except (CMTError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e
    print(f"wrote {out}; use it as --teacher {out}")


if __name__ == "__main__":
    main()
