"""EDM pre-training loss (Karras et al. 2022): denoise x0 + sigma * eps at sigma ~ LogNormal(p_mean, p_std),
weighted by (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2 so every noise level contributes a unit-scale
loss at initialisation. Batch: {"image": (B, C, H, W) in [-1, 1], optional "labels": (B,) int}."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(kw_only=True)
class EDMLoss:
    """Built by objectives.from_config from PretrainConfig, where each default is declared."""
    p_mean: float
    p_std: float
    sigma_data: float

    def __call__(self, model, batch, step):
        x0 = batch["image"]
        sigma = (torch.randn(x0.shape[0], device=x0.device) * self.p_std + self.p_mean).exp()
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        denoised = model(x0 + sigma[:, None, None, None] * torch.randn_like(x0), sigma, batch.get("labels"))
        per_sample = ((denoised.float() - x0) ** 2).flatten(1).mean(1)
        loss = (weight * per_sample).mean()
        return loss, {"loss_unweighted": per_sample.mean().detach()}
