"""EDM-preconditioned network around a diffusers UNet2DModel: the format of the project's own teachers and students.

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))
    c_in = 1/sqrt(sigma^2 + sd^2), c_noise = log(sigma)/4,
    c_skip = sd^2/((sigma - s)^2 + sd^2), c_out = (sigma - s) sd / sqrt(sigma^2 + sd^2)
with s = 0 for a diffusion denoiser and s = sigma_min_shift for a consistency student at evaluation,
which makes f(x, s) = x exactly (the boundary condition). In training mode s = 0, as the reference's ECMPrecond
(sony/cmt) does: training sees plain EDM coefficients, the shift applies only to the eval-mode network that
samples. diffusers' sinusoidal timestep embedding
expects timesteps in the hundreds, so the backbone receives c_noise * time_scale.

On disk: a diffusers model directory (config.json + weights, loadable with UNet2DModel.from_pretrained)
plus `cmt_precond.json` holding the preconditioning.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..constants import SIGMA_DATA, TIME_SCALE
from ..errors import CMTError
from .base import Denoiser, sample_shape, sigma_column

PRECOND_FILE = "cmt_precond.json"
MAX_WIDTH = 2048  # wider than any published UNet level; a larger --channels value is a typo that would exhaust memory


@dataclass
class Precond:
    sigma_data: float = SIGMA_DATA
    time_scale: float = TIME_SCALE
    boundary_sigma: float = 0.0  # s above: 0 = plain EDM denoiser
    num_classes: int = 0


def check_widths(channels) -> None:
    """Refuse UNet widths GroupNorm cannot split or too large to allocate, before anything is built."""
    groups = min(32, channels[0] // 2)
    bad = [ch for ch in channels if not 2 <= ch <= MAX_WIDTH or ch % max(groups, 1)]
    if groups < 1 or bad:
        raise CMTError(f"--channels {','.join(map(str, channels))}: each width must be in 2..{MAX_WIDTH} and divisible "
                       f"by the GroupNorm group count min(32, first width // 2) = {groups}; e.g. 48,96 or 64,128")


def build_unet(shape, channels=(48, 96), layers_per_block=2, num_classes=0, dropout=0.0, attention=False):
    """A small diffusers UNet2DModel for the embedded defaults (about 2 M parameters at channels 48/96)."""
    from diffusers import UNet2DModel

    check_widths(channels)
    c, h, w = shape
    n = len(channels)
    down = ["AttnDownBlock2D" if attention and i == n - 1 else "DownBlock2D" for i in range(n)]
    up = ["AttnUpBlock2D" if attention and i == 0 else "UpBlock2D" for i in range(n)]
    return UNet2DModel(
        sample_size=(h, w), in_channels=c, out_channels=c, block_out_channels=tuple(channels),
        down_block_types=tuple(down), up_block_types=tuple(up), layers_per_block=layers_per_block,
        norm_num_groups=min(32, channels[0] // 2), num_class_embeds=num_classes or None,
        add_attention=attention, dropout=dropout,
    )


class EDMDenoiser(Denoiser):
    def __init__(self, backbone, precond: Precond | None = None):
        super().__init__()
        self.backbone = backbone
        self.precond = precond or Precond()
        self.shape = sample_shape(backbone.config)
        self.num_classes = self.precond.num_classes

    def coefficients(self, sigma: torch.Tensor):
        sd, s = self.precond.sigma_data, 0.0 if self.training else self.precond.boundary_sigma
        c_in = 1 / (sigma**2 + sd**2).sqrt()
        c_skip = sd**2 / ((sigma - s) ** 2 + sd**2)
        c_out = (sigma - s) * sd / (sigma**2 + sd**2).sqrt()
        c_noise = sigma.log() / 4
        return c_in, c_skip, c_out, c_noise

    def forward(self, x, sigma, class_labels=None):
        sig = sigma_column(sigma, x).float()
        c_in, c_skip, c_out, c_noise = self.coefficients(sig)
        labels = self.check_labels(class_labels, x.shape[0])
        xf = x.float()
        f = self.backbone(c_in * xf, c_noise.flatten() * self.precond.time_scale, class_labels=labels).sample
        return (c_skip * xf + c_out * f.float()).to(x.dtype)

    def describe(self) -> dict:
        return {**super().describe(), "precond": asdict(self.precond),
                "backbone": type(self.backbone).__name__,
                "parameters": sum(p.numel() for p in self.backbone.parameters())}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        self.backbone.save_pretrained(path)
        (path / PRECOND_FILE).write_text(json.dumps(asdict(self.precond), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, **precond_overrides) -> "EDMDenoiser":
        from diffusers import UNet2DModel

        path = Path(path)
        precond = Precond(**{**json.loads((path / PRECOND_FILE).read_text()), **precond_overrides})
        sample_shape(json.loads((path / "config.json").read_text()))  # before the model is built
        return cls(UNet2DModel.from_pretrained(path), precond)
