"""Per-sample distances d(a, b) -> (B,) shared by the regression objectives (CMT, ECT).

l2:    mean over elements of (a - b)^2  (the objective the CMT theory is stated for)
huber: sqrt(mean (a - b)^2 + c^2) - c   (pseudo-Huber; c in data units, robust to large residuals)
"""

from __future__ import annotations

import torch

from ..config import DISTANCES


def distance(a: torch.Tensor, b: torch.Tensor, kind: str = "l2", huber_c: float = 0.03) -> torch.Tensor:
    sq = ((a.float() - b.float()) ** 2).flatten(1).mean(1)
    if kind == "l2":
        return sq
    if kind == "huber":
        return (sq + huber_c**2).sqrt() - huber_c
    raise ValueError(f"unknown distance {kind!r}; choose one of {DISTANCES}")
