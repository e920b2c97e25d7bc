"""Exponential moving average of the weights: the model every stage samples, evaluates and exports.

ema <- decay * ema + (1 - decay) * weights after every optimizer step. A half-life in samples is the
batch-size-independent way to say the same thing: after `halflife` samples the old weights count half.
"""

from __future__ import annotations

import copy

import torch


def ema_decay(decay: float, halflife: float = 0.0, batch_size: int = 1) -> float:
    """Per-step decay: `decay` as given, or 0.5 ** (batch_size / halflife) when a half-life (samples) is set."""
    if halflife > 0:
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
