"""Sigma grids, decreasing from sigma_max to sigma_min (both included), as float64 tensors of length steps + 1."""

from __future__ import annotations

import torch

from ..constants import SIGMA_MAX, SIGMA_MIN


def logsnr_grid(steps: int, sigma_max: float = SIGMA_MAX, sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """Uniform in log-SNR, i.e. geometric in sigma: the paper's mid-training grid (16 steps)."""
    i = torch.arange(steps + 1, dtype=torch.float64)
    return sigma_max * (sigma_min / sigma_max) ** (i / steps)


def karras_grid(steps: int, sigma_max: float = SIGMA_MAX, sigma_min: float = SIGMA_MIN,
                rho: float = 7.0) -> torch.Tensor:
    """EDM's rho-spaced grid (denser near sigma_min); no trailing zero, the last state sits at sigma_min."""
    i = torch.arange(steps + 1, dtype=torch.float64)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (a + i / steps * (b - a)) ** rho


GRIDS = {"logsnr": logsnr_grid, "karras": karras_grid}


def make_grid(name: str, steps: int, sigma_max: float = SIGMA_MAX, sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; choose one of {sorted(GRIDS)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    return GRIDS[name](steps, sigma_max, sigma_min)
