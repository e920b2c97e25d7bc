"""Closed-form Gaussian-mixture teacher: the exact posterior mean, so flow maps and solver errors have ground truth.

Data x0 ~ sum_k w_k N(mu_k, s_k^2 I). Under x = x0 + sigma * eps each component stays Gaussian,
x | k ~ N(mu_k, (s_k^2 + sigma^2) I), hence
    D(x, sigma) = sum_k r_k(x) [mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)],
with responsibilities r_k computed stably in log space. Everything runs in x's dtype (use float64 for references).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .base import Denoiser, sigma_column


class GMMDenoiser(Denoiser):
    def __init__(self, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor, shape, name: str = "custom"):
        super().__init__()
        k = means.shape[0]
        self.shape = tuple(int(s) for s in shape)
        if means.reshape(k, -1).shape[1] != math.prod(self.shape):
            raise ValueError(f"GMM means of size {means.reshape(k, -1).shape[1]} do not fit shape {self.shape}")
        self.name = name
        self.register_buffer("means", means.reshape(k, -1).double())
        self.register_buffer("stds", stds.reshape(k).double())
        self.register_buffer("weights", (weights / weights.sum()).reshape(k).double())

    def describe(self) -> dict:
        return {**super().describe(), "preset": self.name, "components": int(self.means.shape[0])}

    def forward(self, x, sigma, class_labels=None):
        b = x.shape[0]
        flat = x.reshape(b, -1)
        dt = x.dtype
        mu, s2, w = self.means.to(dt), (self.stds**2).to(dt), self.weights.to(dt)
        sig2 = sigma_column(sigma, x).reshape(b, 1) ** 2  # (B, 1)
        var = s2[None, :] + sig2  # (B, K)
        d = flat.shape[1]
        sqdist = (flat**2).sum(1, keepdim=True) - 2 * flat @ mu.T + (mu**2).sum(1)[None, :]  # (B, K)
        logp = torch.log(w)[None, :] - 0.5 * sqdist / var - 0.5 * d * torch.log(var)
        r = torch.softmax(logp, dim=1)  # (B, K)
        gain = s2[None, :] / var  # (B, K)
        # sum_k r_k [mu_k + g_k (x - mu_k)] = sum_k r_k (1 - g_k) mu_k + (sum_k r_k g_k) x
        out = (r * (1 - gain)) @ mu + (r * gain).sum(1, keepdim=True) * flat
        return out.reshape_as(x)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact samples of the mixture (float64, CPU)."""
        comp = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=generator)
        noise = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        x = self.means.cpu()[comp] + self.stds.cpu()[comp, None] * noise
        return x.reshape(n, *self.shape)


def gmm2d() -> GMMDenoiser:
    """A 2-D, 8-component ring mixture stored as shape (2, 1, 1); data scale about the EDM sigma_data of 0.5."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 0.8 * torch.stack([angles.cos(), angles.sin()], 1)
    return GMMDenoiser(means, torch.full((8,), 0.08), torch.ones(8), (2, 1, 1), name="gmm2d")


def gmm8x8() -> GMMDenoiser:
    """An image-shaped (1, 8, 8) mixture: one component per digit class, centred on that class's mean image."""
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = d.images.astype(np.float64) / 16.0 * 2 - 1  # [-1, 1], like the digits teacher's data
    means = torch.from_numpy(np.stack([imgs[d.target == c].mean(0) for c in range(10)]))
    return GMMDenoiser(means, torch.full((10,), 0.2), torch.ones(10), (1, 8, 8), name="gmm8x8")


PRESETS = {"gmm2d": gmm2d, "gmm8x8": gmm8x8}
