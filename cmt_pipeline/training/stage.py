"""Setup the training stages share: what a stage records about the network it trains."""

from __future__ import annotations

import dataclasses

import torch

from ..errors import CMTError
from ..teachers import EDMDenoiser


def with_time_scale(cfg, net: torch.nn.Module, origin: str):
    """cfg with time_scale set to what `net`'s UNet receives, so the recorded config says how the student was made
    (None for a network without EDM's timestep input). --time-scale only shapes a fresh UNet: asking a network
    made elsewhere (`origin`, for the message) for another scale is refused, not silently ignored."""
    found = next((m.precond.time_scale for m in net.modules() if isinstance(m, EDMDenoiser)), None)
    if cfg.time_scale is not None and cfg.time_scale != found:
        has = f"timestep scale {found:g}" if found is not None else "no EDM timestep scale"
        raise CMTError(f"--time-scale {cfg.time_scale:g} only shapes a fresh UNet, and {origin} has {has}; "
                       "drop --time-scale")
    return dataclasses.replace(cfg, time_scale=found)
