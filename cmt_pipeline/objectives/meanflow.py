"""MeanFlow post-training of an average-velocity student u(z, r, t) (models/meanflow.py), flow-matching time.

    z_t = (1 - t) x0 + t eps,  v = eps - x0   (t = sigma / (1 + sigma): the EDM point x0 + sigma eps, rescaled)
    u_tgt = v - (t - r) du/dt,  du/dt = d/dt u(z_t, r, t) along the flow = J_z u . v + du/dt (partial),
    L_i = sum over elements of (u(z_t, r, t) - stopgrad u_tgt)^2,
    loss = mean_i w_i L_i^2,  w_i = 1 / (stopgrad L_i^2 + c)^p   (adaptive weighting, as sony/mf-rae's
    transport.py writes it: the summed squared error, squared; with p = 1 each sample's gradient is
    2 grad L_i / L_i while c is negligible, so no sample's scale dominates)

du/dt is one forward-mode Jacobian-vector product with tangent (v, 0, 1) for (z, r, t). Since logit(t) =
log(sigma), sampling t logit-normal is sampling sigma log-normal: two sigmas are drawn, t = the larger, r = the
smaller, and r is set to t (plain flow matching) for all but `r_fraction` of the samples. The JVP runs without
gradient on the module inside DDP, the gradient-carrying forward through the (possibly DDP-wrapped) model, so
DDP sees exactly one forward per backward; both use the same dropout masks (the generator is rewound between
them), so the target is the derivative of the very network being trained.
Batch: {"image": (B, C, H, W), optional "labels": (B,)}.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..constants import SIGMA_MIN
from ..coordinates import fm_time
from .ect import same_randomness, unwrap


def _contiguous(module, args):
    return (args[0].clone(memory_format=torch.contiguous_format), *args[1:])


@contextlib.contextmanager
def forward_mode_safe(net: torch.nn.Module):
    """Inside the JVP, avoid kernels whose forward-mode derivative is missing or fragile: fused attention (flash,
    memory-efficient) gives way to the composite math kernel, and GroupNorm, whose forward-mode formula views
    its tangent, gets a contiguous input (after an attention block the tangent comes out transposed)."""
    modules = net.modules() if isinstance(net, torch.nn.Module) else ()  # a plain function in tests
    hooks = [m.register_forward_pre_hook(_contiguous) for m in modules if isinstance(m, torch.nn.GroupNorm)]
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        for h in hooks:
            h.remove()


def meanflow_target(net, z, r, t, v, labels=None):
    """(u_tgt, du/dt) at (z, r, t) for velocity v; r and t are (B,) tensors. No gradient flows out."""
    col = (-1,) + (1,) * (z.ndim - 1)
    with torch.no_grad(), forward_mode_safe(net):
        _, dudt = torch.func.jvp(lambda z_, r_, t_: net(z_, r_, t_, labels), (z, r, t),
                                 (v, torch.zeros_like(r), torch.ones_like(t)))
    return v - (t - r).view(col) * dudt, dudt


@dataclass(kw_only=True)
class MeanFlowLoss:
    """Built by objectives.from_config from PostTrainConfig, where each default is declared."""
    p_mean: float
    p_std: float
    r_fraction: float  # share of samples with r != t; the rest train plain flow matching (r = t)
    adaptive_p: float
    adaptive_c: float
    sigma_max: float
    sigma_min: float = SIGMA_MIN  # the sampled noise levels stay inside the solver's range

    def __call__(self, model, batch, step):
        x0 = batch["image"].float()
        labels = batch.get("labels")
        b, col = x0.shape[0], (-1,) + (1,) * (x0.ndim - 1)
        sigma = (torch.randn(b, 2, device=x0.device) * self.p_std + self.p_mean).exp().clamp(self.sigma_min,
                                                                                           self.sigma_max)
        tt = fm_time(sigma)
        t, r = tt.max(1).values, tt.min(1).values
        apart = torch.rand(b, device=x0.device) < self.r_fraction
        r = torch.where(apart, r, t)
        eps = torch.randn_like(x0)
        z, v = (1 - t).view(col) * x0 + t.view(col) * eps, eps - x0
        with same_randomness(x0.device):
            u_tgt, _ = meanflow_target(unwrap(model), z, r, t, v, labels)
        u = model(z, r, t, labels).float()
        sq = ((u - u_tgt) ** 2).flatten(1)
        err = sq.sum(1) ** 2
        weight = (err.detach() + self.adaptive_c) ** -self.adaptive_p
        return (weight * err).mean(), {"mse": sq.mean().detach(), "r_neq_t": apart.float().mean()}
