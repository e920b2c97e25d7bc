"""MeanFlow students built from any trainable denoiser (the project's EDM networks, a user's diffusers UNet or DiT).

u(z, r, t) in flow-matching time (z = x / (1 + sigma), t = sigma / (1 + sigma)): the network's velocity at t,
plus an embedding of the gap t - r added to each of its time embeddings (UNet2DModel has one; diffusers' DiT one
per block). Those embeddings' last layers start at zero, so at initialisation u(z, r, t) is the teacher's
instantaneous velocity for every r; for a flow-matching teacher that is its own output at its native time.
Its forward is u itself (so DDP sees the call it trains); `MeanFlowDenoiser` wraps it in the denoiser seam as
the one-step map to r = 0, so samplers and evaluation treat both kinds of student alike.
"""

from __future__ import annotations

import functools

import torch

from ..coordinates import edm_sigma, edm_state, fm_state, fm_time
from ..teachers.base import Denoiser, sigma_column


def time_embeddings(net: torch.nn.Module) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """The (sinusoidal projection, MLP) pairs through which `net` sees its timestep."""
    pairs = []
    for m in net.modules():
        mlp = getattr(m, "time_embedding", None) or getattr(m, "timestep_embedder", None)
        if hasattr(m, "time_proj") and hasattr(mlp, "linear_2"):
            pairs.append((m.time_proj, mlp))
    return pairs


class MeanFlowStudent(torch.nn.Module):
    def __init__(self, net: Denoiser, gap_scale: float = 1000.0):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding

        self.net, self.gap_scale = net, gap_scale
        self.shape, self.num_classes = net.shape, net.num_classes
        pairs = time_embeddings(net)
        if not pairs:
            raise ValueError(f"{type(net).__name__} has no diffusers time embedding (time_proj + time_embedding or "
                             "timestep_embedder) to add the MeanFlow gap t - r to; train it as a consistency "
                             "model (mid-train --flavour cm, post-train --objective ect)")
        self.gap_embeddings = torch.nn.ModuleList()
        for i, (_, mlp) in enumerate(pairs):
            gap = TimestepEmbedding(mlp.linear_1.in_features, mlp.linear_2.out_features)
            torch.nn.init.zeros_(gap.linear_2.weight)
            torch.nn.init.zeros_(gap.linear_2.bias)
            self.gap_embeddings.append(gap)
            # a partial of a bound method, not a closure: deepcopy (the EMA copy) rebinds it to the copy
            mlp.register_forward_hook(functools.partial(self._add_gap, i))
        self._projs = [proj for proj, _ in pairs]  # a plain list: these modules already belong to net
        self._gap = None

    def _add_gap(self, i, module, inputs, out):
        if self._gap is None:
            return out
        return out + self.gap_embeddings[i](self._projs[i](self._gap * self.gap_scale).to(out.dtype))

    def forward(self, z, r, t, class_labels=None):
        """Average velocity u(z, r, t) = (z_t - z_r) / (t - r) predicted at z = z_t; r, t floats or (B,)."""
        t_col = sigma_column(t, z).float()
        r_col = sigma_column(r, z).float()
        sigma = edm_sigma(t_col)
        x = edm_state(z.float(), sigma)
        self._gap = (t_col - r_col).flatten()
        try:
            d = self.net(x, sigma.flatten(), class_labels).float()
        finally:
            self._gap = None
        return ((x - d) / sigma - d).to(z.dtype)

    def describe(self) -> dict:
        return {**self.net.describe(), "kind": "MeanFlowStudent", "gap_scale": self.gap_scale}


class MeanFlowDenoiser(Denoiser):
    """The denoiser seam over a MeanFlow student: x0 = z_t - t * u(z_t, 0, t), in EDM (VE) coordinates."""

    def __init__(self, student: MeanFlowStudent):
        super().__init__()
        self.student, self.shape, self.num_classes = student, student.shape, student.num_classes

    def forward(self, x, sigma, class_labels=None):
        s = sigma_column(sigma, x).float()
        t = fm_time(s)
        z = fm_state(x.float(), s)
        return (z - t * self.student(z, 0.0, t.flatten(), class_labels).float()).to(x.dtype)

    def describe(self) -> dict:
        return self.student.describe()


def as_denoiser(model: torch.nn.Module) -> Denoiser:
    """Any trained network through the denoiser seam (students of both kinds, teachers)."""
    return MeanFlowDenoiser(model) if isinstance(model, MeanFlowStudent) else model
