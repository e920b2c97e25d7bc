"""A user's diffusers VP model (UNet2DModel + noise-scheduler config) mapped exactly onto the EDM form.

For a VP model with cumulative alphas a_t:  sigma(t) = sqrt((1 - a_t) / a_t),  x_vp = x / sqrt(1 + sigma^2).
    epsilon prediction:  D = x - sigma * eps_hat
    v prediction:        D = sqrt(a) x_vp - sqrt(1 - a) v_hat
    sample prediction:   D = x0_hat
Between the scheduler's discrete timesteps the network gets a fractional timestep, interpolated linearly
in log sigma (exact on the training grid); sigmas outside the grid are clamped to its ends.

Directory layouts accepted: a diffusers pipeline folder (`unet/` + `scheduler/`), or a model folder whose
`scheduler_config.json` sits beside `config.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .base import Denoiser, sigma_column

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def find_vp_layout(path: Path) -> tuple[Path, Path] | None:
    """(model dir, scheduler config file) if `path` looks like a diffusers VP teacher, else None."""
    if (path / "unet" / "config.json").exists() and (path / "scheduler" / "scheduler_config.json").exists():
        return path / "unet", path / "scheduler" / "scheduler_config.json"
    if (path / "config.json").exists() and (path / "scheduler_config.json").exists():
        return path, path / "scheduler_config.json"
    return None


class DiffusersVPDenoiser(Denoiser):
    def __init__(self, model, scheduler):
        super().__init__()
        self.model = model
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}; expected one of {PREDICTION_TYPES}")
        self.scheduler_name = type(scheduler).__name__
        ac = scheduler.alphas_cumprod.double()
        self.register_buffer("log_sigmas", ((1 - ac) / ac).sqrt().log())  # increasing in t
        cfg = model.config
        size = cfg.sample_size if isinstance(cfg.sample_size, (list, tuple)) else (cfg.sample_size,) * 2
        self.shape = (cfg.in_channels, *size)
        self.num_classes = int(getattr(cfg, "num_class_embeds", None) or 0)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep whose sigma(t) is `sigma`, by linear interpolation in log sigma."""
        ls = self.log_sigmas
        q = sigma.double().log().clamp(ls[0], ls[-1])
        hi = torch.searchsorted(ls, q).clamp(1, len(ls) - 1)
        lo = hi - 1
        frac = (q - ls[lo]) / (ls[hi] - ls[lo])
        return (lo.double() + frac).float()

    def forward(self, x, sigma, class_labels=None):
        sig = sigma_column(sigma, x).float()
        labels = self.check_labels(class_labels, x.shape[0])
        a = 1 / (1 + sig**2)
        xf = x.float()
        x_vp = xf * a.sqrt()
        out = self.model(x_vp, self.timestep(sig.flatten()), class_labels=labels).sample.float()
        if out.shape[1] == 2 * x.shape[1]:
            out = out[:, : x.shape[1]]  # learned-variance models output (prediction, variance)
        if self.prediction_type == "epsilon":
            d = xf - sig * out
        elif self.prediction_type == "v_prediction":
            d = a.sqrt() * x_vp - (1 - a).sqrt() * out
        else:
            d = out
        return d.to(x.dtype)

    def describe(self) -> dict:
        return {**super().describe(), "model": type(self.model).__name__, "scheduler": self.scheduler_name,
                "prediction_type": self.prediction_type,
                "sigma_range": [self.log_sigmas[0].exp().item(), self.log_sigmas[-1].exp().item()]}

    @classmethod
    def load(cls, path: str | Path) -> "DiffusersVPDenoiser":
        import diffusers

        layout = find_vp_layout(Path(path))
        if layout is None:
            raise FileNotFoundError(f"{path}: no diffusers unet/ + scheduler/ (or config.json + scheduler_config.json)")
        model_dir, sched_file = layout
        model_cls = getattr(diffusers, json.loads((model_dir / "config.json").read_text()).get("_class_name", "UNet2DModel"))
        sched_cfg = json.loads(sched_file.read_text())
        sched_cls = getattr(diffusers, sched_cfg.get("_class_name", "DDPMScheduler"))
        return cls(model_cls.from_pretrained(model_dir), sched_cls.from_config(sched_cfg))
