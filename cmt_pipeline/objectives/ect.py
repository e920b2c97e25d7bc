"""ECT (easy consistency tuning) post-training of a consistency student f(x, sigma) (EDM / VE noise form).

    t ~ LogNormal(p_mean, p_std),  r = t (1 - (1 + 8 sigmoid(-t)) / q) clamped at 0,
    x_t = x0 + t eps,  x_r = x0 + r eps   (one noise direction for both),
    L = w(t) d(f(x_t, t), stopgrad f(x_r, r)) / (t - r),   f(x_r, 0) := x0,
    d = sqrt(sum (a - b)^2 + c^2) - c by default (distances.py "norm", c = 0: the reference's unsquared L2 norm).

q sets the gap: large q makes r close to t (a near-continuous-time consistency condition). It is fixed (what the
reference does after CMT: q = 4096 for CIFAR-10) or follows vanilla ECT's curriculum q^(stage + 1) with
stage = (step - 1) // q_double_every (reference default q = 2: the gap halves every stage), for inits that
start far from a flow map. The target runs with the same dropout masks as the prediction (torch's generator is rewound
between the two calls): with different masks the two evaluations disagree by O(1) and the 1/(t - r) weight blows
that noise up instead of measuring consistency. Batch: {"image": (B, C, H, W), optional "labels": (B,)}.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.parallel import DataParallel, DistributedDataParallel

from .distances import distance


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP: extra evaluations that must not touch DDP's gradient bookkeeping run on it."""
    return model.module if isinstance(model, (DistributedDataParallel, DataParallel)) else model


def same_randomness(device: torch.device):
    """Context that restores torch's generator (CPU, and this device's CUDA one) on exit, so the next call
    draws the same dropout masks as the one inside."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def ect_r(t: torch.Tensor, q: float) -> torch.Tensor:
    """The ECT mapping t -> r, clamped at 0."""
    return (t * (1 - (1 + 8 * torch.sigmoid(-t)) / q)).clamp_min(0)


@dataclass(kw_only=True)
class ECTLoss:
    """Built by objectives.from_config from PostTrainConfig, where each default is declared."""
    p_mean: float
    p_std: float
    q: float
    q_double_every: int  # > 0: a new curriculum stage every this many steps, q^(stage + 1) (vanilla ECT)
    distance: str
    huber_c: float  # c of the norm / huber distances
    edm_weighting: bool  # also weight by (t^2 + sigma_data^2) / (t sigma_data)^2 (ImageNet-512 recipe)
    sigma_data: float  # the student's

    def q_at(self, step: int) -> float:
        return self.q ** ((step - 1) // self.q_double_every + 1) if self.q_double_every else self.q

    def __call__(self, model, batch, step):
        x0 = batch["image"].float()
        labels = batch.get("labels")
        t = (torch.randn(x0.shape[0], device=x0.device) * self.p_std + self.p_mean).exp()
        r = ect_r(t, self.q_at(step))
        eps = torch.randn_like(x0)
        col = (-1,) + (1,) * (x0.ndim - 1)
        with same_randomness(x0.device):
            pred = model(x0 + t.view(col) * eps, t, labels)
        with torch.no_grad():
            at_zero = r == 0  # never evaluate the network at sigma = 0; its target is the data itself
            r_eval = torch.where(at_zero, t, r)
            target = unwrap(model)(x0 + r_eval.view(col) * eps, r_eval, labels).float()
            target = torch.where(at_zero.view(col), x0, target)
        weight = 1 / (t - r)
        if self.edm_weighting:
            weight = weight * (t**2 + self.sigma_data**2) / (t * self.sigma_data) ** 2
        per_sample = distance(pred, target, self.distance, self.huber_c)
        return (weight * per_sample).mean(), {"distance": per_sample.mean().detach(), "q": self.q_at(step),
                                              "r_zero": at_zero.float().mean()}
