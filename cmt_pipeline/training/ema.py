"""Exponential moving average of the weights: the model every stage samples, evaluates and exports.

ema <- decay * ema + (1 - decay) * weights after every optimizer step. A half-life in samples is the
batch-size-independent way to say the same thing: after `halflife` samples the old weights count half. EDM's
ramp-up shortens the half-life early in training, so the average does not drag the random initialisation along.
"""

from __future__ import annotations

import copy

import torch


def ema_decay(decay: float, halflife: float = 0.0, batch_size: int = 1, rampup: float = 0.0, step: int = 1) -> float:
    """Per-step decay of 1-based optimizer step `step`: `decay` as given, or 0.5 ** (batch_size / halflife) when a
    half-life (samples) is set. With `rampup` > 0 the half-life grows with training as in EDM (NVlabs/edm
    training/training_loop.py, ema_rampup_ratio): min(halflife, seen * rampup), seen = (step - 1) * batch_size the
    samples before this step (EDM's cur_nimg at its update), floored at 1e-8, so step 1 copies the weights. It
    depends on the step alone, so a resumed run averages as an uninterrupted one."""
    if halflife > 0:
        if rampup > 0:
            halflife = max(min(halflife, (step - 1) * batch_size * rampup), 1e-8)
        return 0.5 ** (batch_size / halflife)
    if not 0 <= decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
    return decay


class EMA(torch.nn.Module):
    """An fp32 shadow copy of a model; a Module so that .to(device) moves it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, decay: float) -> None:
        ema = list(self.model.parameters())
        torch._foreach_lerp_(ema, [p.detach().to(e.dtype) for p, e in zip(model.parameters(), ema)], 1 - decay)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)
