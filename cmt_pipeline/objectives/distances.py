"""Per-sample distances d(a, b) -> (B,) shared by the regression objectives (CMT, ECT).

norm:  sqrt(sum over ALL elements of (a - b)^2 + c^2) - c   (the reference's ECT distance, sony/cmt ECMLoss and
       locuslab/ect: c = 0, its default, makes it the plain L2 norm; c > 0 its pseudo-Huber form)
l2:    mean over elements of (a - b)^2  (the objective the CMT theory is stated for)
huber: sqrt(mean (a - b)^2 + c^2) - c   (pseudo-Huber on the mean; c in data units, robust to large residuals)

norm and huber differ by more than a scale: the square root turns each sample's gradient into a unit vector
times 1/(t - r), so samples with large residuals no longer dominate a batch as they do under l2.
"""

from __future__ import annotations

import torch

from ..config import DISTANCES


def distance(a: torch.Tensor, b: torch.Tensor, kind: str = "l2", c: float = 0.0) -> torch.Tensor:
    sq = ((a.float() - b.float()) ** 2).flatten(1)
    if kind == "norm":
        return (sq.sum(1) + c**2).sqrt() - c
    if kind == "l2":
        return sq.mean(1)
    if kind == "huber":
        return (sq.mean(1) + c**2).sqrt() - c
    raise ValueError(f"unknown distance {kind!r}; choose one of {DISTANCES}")
