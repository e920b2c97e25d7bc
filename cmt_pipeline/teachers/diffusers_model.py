"""A user's diffusers model (a denoising backbone + its noise scheduler) mapped exactly onto the EDM form.

Backbones: any diffusers model called as `model(x, timestep, class_labels=...)` returning `.sample` (or a
tensor): UNet2DModel, DiTTransformer2DModel, and others of that shape. A model that needs more inputs (text
embeddings, added conditions) is refused by `check_backbone`, which names what is supported.

Parametrisations, chosen by the scheduler (`PARAMETRISATIONS`):
  VP (DDPM, DDIM, ...; cumulative alphas a_t): sigma(t) = sqrt((1 - a_t) / a_t), x_vp = x / sqrt(1 + sigma^2),
      epsilon:  D = x - sigma * eps_hat;  v:  D = sqrt(a) x_vp - sqrt(1 - a) v_hat;  sample:  D = x0_hat.
      Between the scheduler's discrete timesteps the network gets a fractional timestep, interpolated linearly
      in log sigma (exact on the training grid); sigmas outside the grid are clamped to its ends.
  Flow matching (FlowMatchEulerDiscreteScheduler; x_t = (1 - t) x0 + t eps, velocity v = eps - x0):
      t = sigma / (1 + sigma), x_rf = x / (1 + sigma), D = x_rf - t v_hat, the network's timestep being
      t * num_train_timesteps. Exact for every sigma > 0, so no clamping; a scheduler `shift` only moves the
      sampling grid, never this map.

Directory layouts: a diffusers pipeline folder (`unet/` or `transformer/`, plus `scheduler/`), or a model
folder whose `scheduler_config.json` sits beside `config.json`.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch

from ..coordinates import fm_state, fm_time
from ..errors import CMTError
from .base import Denoiser, sample_shape, sigma_column

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
INPUT_NAMES = ("sample", "hidden_states", "x")
SUPPORTED = ("UNet2DModel", "DiTTransformer2DModel",
             "or any diffusers model called as model(x, timestep, class_labels=None)")


def find_layout(path: Path) -> tuple[Path, Path] | None:
    """(model dir, scheduler config file) if `path` looks like a diffusers teacher, else None."""
    for sub in ("unet", "transformer"):
        if (path / sub / "config.json").exists() and (path / "scheduler" / "scheduler_config.json").exists():
            return path / sub, path / "scheduler" / "scheduler_config.json"
    if (path / "config.json").exists() and (path / "scheduler_config.json").exists():
        return path, path / "scheduler_config.json"
    return None


def check_backbone(model) -> str | None:
    """The keyword that carries class labels (None if the model takes none); ValueError if the model's forward
    is not (x, timestep[, class_labels]) with every other input optional."""
    params = list(inspect.signature(model.forward).parameters.values())
    name = type(model).__name__
    if not params or params[0].name not in INPUT_NAMES or "timestep" not in [p.name for p in params[:3]]:
        raise ValueError(f"{name}.forward{inspect.signature(model.forward)} is not (x, timestep, ...); "
                         f"supported backbones: {', '.join(SUPPORTED)}")
    extra = [p.name for p in params[1:] if p.default is inspect.Parameter.empty and p.name != "timestep"
             and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if extra:
        raise ValueError(f"{name} needs inputs a class-conditional or unconditional teacher cannot give "
                         f"({', '.join(extra)}); supported backbones: {', '.join(SUPPORTED)}")
    return "class_labels" if "class_labels" in [p.name for p in params] else None


def class_info(model, label_arg: str | None) -> tuple[int, int | None]:
    """(number of classes, the built-in null label for guidance or None). A label embedding trained with label
    dropout (DiT's LabelEmbedding) keeps one extra row for 'no class': that row's index is the null label."""
    if label_arg is None:
        return 0, None
    cfg = model.config
    n = int(cfg.get("num_class_embeds") or cfg.get("num_embeds_ada_norm") or 0)
    null = None
    for m in model.modules():
        if hasattr(m, "embedding_table") and getattr(m, "dropout_prob", 0) > 0 and m.num_classes == n:
            null = n
    return n, null


class VPParametrisation(torch.nn.Module):
    """`alphas_cumprod` as given (a float64 table keeps the small-sigma end exact; teachers/dit.py passes DiT's)."""

    def __init__(self, prediction_type: str, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.prediction_type = prediction_type
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}; expected one of {PREDICTION_TYPES}")
        ac = alphas_cumprod.double()
        self.register_buffer("log_sigmas", ((1 - ac) / ac).sqrt().log())  # increasing in t

    def model_input(self, x, sig):
        return x / (1 + sig**2).sqrt()

    def timestep(self, sig: torch.Tensor) -> torch.Tensor:
        """Fractional timestep whose sigma(t) is `sig`, by linear interpolation in log sigma."""
        ls = self.log_sigmas
        q = sig.flatten().double().log().clamp(ls[0], ls[-1])
        hi = torch.searchsorted(ls, q).clamp(1, len(ls) - 1)
        lo = hi - 1
        return (lo.double() + (q - ls[lo]) / (ls[hi] - ls[lo])).float()

    def denoise(self, x, sig, out):
        if self.prediction_type == "epsilon":
            return x - sig * out
        if self.prediction_type == "v_prediction":
            a = 1 / (1 + sig**2)
            return a * x - (1 - a).sqrt() * out  # sqrt(a) * x_vp = a * x
        return out

    def describe(self) -> dict:
        return {"parametrisation": "vp", "prediction_type": self.prediction_type,
                "sigma_range": [self.log_sigmas[0].exp().item(), self.log_sigmas[-1].exp().item()]}


class FlowMatchParametrisation(torch.nn.Module):
    def __init__(self, scheduler):
        super().__init__()
        self.time_scale = float(scheduler.config.num_train_timesteps)

    def model_input(self, x, sig):
        return fm_state(x, sig)

    def timestep(self, sig):
        return fm_time(sig).flatten() * self.time_scale

    def denoise(self, x, sig, out):
        return fm_state(x, sig) - fm_time(sig) * out

    def describe(self) -> dict:
        return {"parametrisation": "flow-matching", "time_scale": self.time_scale}


def parametrisation_for(scheduler) -> torch.nn.Module:
    if type(scheduler).__name__.startswith("FlowMatch"):
        return FlowMatchParametrisation(scheduler)
    if hasattr(scheduler, "alphas_cumprod"):
        return VPParametrisation(scheduler.config.prediction_type, scheduler.alphas_cumprod)
    raise ValueError(f"unsupported scheduler {type(scheduler).__name__}: expected a VP scheduler with "
                     "alphas_cumprod (DDPMScheduler, DDIMScheduler, ...) or FlowMatchEulerDiscreteScheduler")


def public(config) -> dict:
    """A diffusers config without its "_" bookkeeping keys (a Path there is refused by weights_only loading)."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


class DiffusersDenoiser(Denoiser):
    def __init__(self, model, scheduler):
        super().__init__()
        self.model = model
        self.label_arg = check_backbone(model)
        self.param = parametrisation_for(scheduler)
        self.scheduler_class, self.scheduler_config = type(scheduler).__name__, dict(scheduler.config)
        self.shape = sample_shape(model.config)
        self.num_classes, self.null_label = class_info(model, self.label_arg)

    def forward(self, x, sigma, class_labels=None):
        sig = sigma_column(sigma, x).float()
        xf = x.float()
        kwargs = {self.label_arg: self.check_labels(class_labels, x.shape[0])} if self.label_arg else {}
        out = self.model(self.param.model_input(xf, sig), self.param.timestep(sig), **kwargs)
        out = (out.sample if hasattr(out, "sample") else out[0] if isinstance(out, tuple) else out).float()
        if out.shape[1] == 2 * x.shape[1]:
            out = out[:, : x.shape[1]]  # learned-variance models output (prediction, variance)
        return self.param.denoise(xf, sig, out).to(x.dtype)

    def describe(self) -> dict:
        return {**super().describe(), "model": type(self.model).__name__, "scheduler": self.scheduler_class,
                "null_label": self.null_label, **self.param.describe()}

    def spec(self) -> dict:
        """Enough to rebuild this module (weights aside): checkpoints of students made from it store this."""
        return {"class": "DiffusersDenoiser", "model_class": type(self.model).__name__,
                "model_config": public(self.model.config), "scheduler_class": self.scheduler_class,
                "scheduler_config": public(self.scheduler_config)}

    @classmethod
    def from_spec(cls, spec: dict) -> "DiffusersDenoiser":
        sample_shape(spec["model_config"])  # before the model is built
        model = diffusers_class(spec["model_class"], "ModelMixin").from_config(spec["model_config"])
        return cls(model, diffusers_class(spec["scheduler_class"], "SchedulerMixin").from_config(
            spec["scheduler_config"]))

    @classmethod
    def load(cls, path: str | Path) -> "DiffusersDenoiser":
        layout = find_layout(Path(path))
        if layout is None:
            raise FileNotFoundError(f"{path}: no diffusers unet/ or transformer/ + scheduler/ "
                                    "(or config.json + scheduler_config.json)")
        model_dir, sched_file = layout
        model_cfg = json.loads((model_dir / "config.json").read_text())
        sample_shape(model_cfg)  # before the model is built
        model_name = model_cfg.get("_class_name", "UNet2DModel")
        sched_cfg = json.loads(sched_file.read_text())
        return cls(diffusers_class(model_name, "ModelMixin").from_pretrained(model_dir),
                   diffusers_class(sched_cfg.get("_class_name", "DDPMScheduler"), "SchedulerMixin").from_config(
                       sched_cfg))


def diffusers_class(name, base: str) -> type:
    """diffusers' class `name` if it is a model (base ModelMixin) or a scheduler (SchedulerMixin): a name read from a
    folder or a checkpoint picks nothing else, such as a pipeline, whose loading can run the folder's code."""
    import diffusers

    found = getattr(diffusers, name, None) if isinstance(name, str) else None
    if not (isinstance(found, type) and issubclass(found, getattr(diffusers, base))):
        raise CMTError(f"diffusers {diffusers.__version__} has no {base.removesuffix('Mixin').lower()} class "
                       f"{name!r}; supported backbones: {', '.join(SUPPORTED)}")
    return found
