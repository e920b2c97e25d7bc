"""Consistency Mid-Training objectives: plain regression onto the teacher's own trajectory endpoints.

Batch (from a trajectory store): traj (B, K, C, H, W) states at sigmas[0..K-1], x0 (B, C, H, W) the solver's
final sample at sigmas[K], labels (B,) with -1 for unconditional. No stop-gradient, no target network,
no time curriculum.

CM flavour:  L = mean over the trajectory's points of d(f(x_i, sigma_i), x0)   (uniform weighting); d is l2,
             huber (distances.py) or LPIPS (lpips.py, the paper's default). With off_grid = p, a share p of
             the points moves from sigma_i to a log-uniform sigma' between sigma_i and sigma_{i+1}, its state
             interpolated by one first-order (DDIM) step whose denoised estimate is the one that carries x_i
             exactly onto x_{i+1}: grid sigmas alone leave the student free to wiggle in sigma between them,
             and continuous-time post-training (ECT's small gaps, MeanFlow's JVP) differentiates those wiggles.
MF flavour:  in flow-matching time (z = x / (1 + sigma), t = sigma / (1 + sigma)), for pairs i < j of one
             trajectory (t_i > t_j, x0 counted as the last point), drawn uniformly over all pairs:
             L = || u(z_i, r = t_j, t = t_i) - (z_i - z_j) / (t_i - t_j) ||^2 ;  j = the endpoint is the CM case.
             off_grid moves a share of the sources z_i between t_i and t_{i+1} the same way (MeanFlow's JVP
             differentiates u in t, so the same wiggles matter).
"""

from __future__ import annotations

import functools

from dataclasses import dataclass

import torch
from torch import nn

from ..coordinates import fm_state, fm_time
from .distances import distance


def _labels(batch, repeat: int):
    """Each trajectory's label for its `repeat` points. An unconditional store's -1 labels reach the model, which
    ignores labels when it has no classes (Denoiser.check_labels): testing them here would read the device back."""
    labels = batch.get("labels")
    return None if labels is None else labels.repeat_interleave(repeat)


@functools.lru_cache(maxsize=8)
def grid_on(sigmas: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The objective's sigma grid in float32 on `device`, copied once rather than at every step (a copy that syncs)."""
    return sigmas.to(device, torch.float32)


def between_grid(points, sig, rows, idx, x, share: float):
    """Move a random share of the points (x_i, sigma_i), i < N - 1 (N = points.shape[1]), to sigma' = sigma_i^(1-u)
    sigma_{i+1}^u, u ~ U(0, 1): x' = (sigma'/sigma_i) x_i + (1 - sigma'/sigma_i) d with d = (x_{i+1} - rho x_i) /
    (1 - rho), rho = sigma_{i+1} / sigma_i (the DDIM step's data estimate that lands on x_{i+1}).
    Returns (x', sigma'), both shaped like idx (plus the state's dims)."""
    b, n = idx.shape
    k = points.shape[1]
    move = (torch.rand(b, n, device=points.device) < share) & (idx < k - 1)
    nxt = (idx + 1).clamp_max(k - 1)
    u = torch.rand(b, n, device=points.device)
    s_i, s_n = sig[idx], sig[nxt]
    s_new = torch.where(move, s_i ** (1 - u) * s_n ** u, s_i)
    rho = torch.where(move, s_n / s_i, torch.zeros_like(s_i))
    shape = (b, n) + (1,) * (points.ndim - 2)
    d = (points[rows, nxt] - rho.view(shape) * x) / (1 - rho).view(shape)
    a = (s_new / s_i).view(shape)
    return torch.where(move.view(shape), a * x + (1 - a) * d, x), s_new


@dataclass(kw_only=True)
class CMTLoss:
    """Built by objectives.from_config from MidTrainConfig, where each default is declared."""
    sigmas: torch.Tensor  # (K + 1,) float64: the states' sigmas, then the endpoint's
    points_per_traj: int  # 0 = all K points of every trajectory each step
    distance: str  # l2, huber (distances.py), or lpips: the `lpips` module below
    huber_c: float
    off_grid: float  # share of points moved between grid sigmas (the last stored state stays on the grid)
    lpips: nn.Module | None = None  # objectives/lpips.py's LPIPS, loaded once; moved to the student's device

    def __post_init__(self):
        if self.distance == "lpips" and self.lpips is None:
            raise ValueError("CMTLoss(distance='lpips') needs its LPIPS module: LPIPS.from_files(vgg, heads)")

    def dist(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.distance == "lpips":
            return self.lpips.to(pred.device)(pred, target)
        return distance(pred, target, self.distance, self.huber_c)

    def __call__(self, model, batch, step):
        traj, x0 = batch["traj"].float(), batch["x0"].float()
        b, k = traj.shape[:2]
        sig = grid_on(self.sigmas, traj.device)[:k]
        rows = torch.arange(b, device=traj.device)[:, None]
        idx = torch.arange(k, device=traj.device).expand(b, k)
        if self.points_per_traj and self.points_per_traj < k:
            idx = torch.rand(b, k, device=traj.device).argsort(1)[:, : self.points_per_traj]
        x, sig_b = traj[rows, idx], sig[idx]
        if self.off_grid > 0:
            x, sig_b = between_grid(traj, sig, rows, idx, x, self.off_grid)
        k = idx.shape[1]
        pred = model(x.flatten(0, 1), sig_b.flatten(), _labels(batch, k))
        per_point = self.dist(pred, x0.repeat_interleave(k, 0))
        return per_point.mean(), {"loss_first_point": per_point.view(b, k)[:, 0].mean().detach()}


@dataclass(kw_only=True)
class CMTMeanFlowLoss:
    """Built by objectives.from_config from MidTrainConfig, where each default is declared."""
    sigmas: torch.Tensor  # (K + 1,)
    pairs_per_traj: int
    off_grid: float  # share of source points moved between their grid sigma and the next point's

    def __call__(self, model, batch, step):
        traj, x0 = batch["traj"].float(), batch["x0"].float()
        b, k = traj.shape[:2]
        points = torch.cat([traj, x0[:, None]], 1)  # (B, K + 1, ...): the endpoint is the last point
        sig = grid_on(self.sigmas, traj.device)[: k + 1]
        t_all = fm_time(sig)
        # uniform over all (K + 1) K / 2 pairs i < j (sony/mf-rae): the endpoint and x_T each take part in K of them
        pairs = torch.triu_indices(k + 1, k + 1, offset=1, device=traj.device)
        pick = torch.randint(0, pairs.shape[1], (b, self.pairs_per_traj), device=traj.device)
        i, j = pairs[0, pick], pairs[1, pick]
        rows = torch.arange(b, device=traj.device)[:, None]
        shape = (-1, 1, 1, 1)
        x_i, s_i = points[rows, i], sig[i]
        if self.off_grid > 0:  # still before point j: sigma' lies above sigma_{i+1} >= sigma_j
            x_i, s_i = between_grid(points, sig, rows, i, x_i, self.off_grid)
        z_i = fm_state(x_i, s_i.view(b, -1, 1, 1, 1)).flatten(0, 1)
        z_j = fm_state(points[rows, j], sig[j].view(b, -1, 1, 1, 1)).flatten(0, 1)
        t_i, t_j = fm_time(s_i).flatten(), t_all[j].flatten()
        target = (z_i - z_j) / (t_i - t_j).view(shape)
        u = model(z_i, t_j, t_i, _labels(batch, self.pairs_per_traj))
        per_pair = ((u.float() - target) ** 2).flatten(1).mean(1)
        return per_pair.mean(), {"endpoint_pairs": (j == k).float().mean()}
