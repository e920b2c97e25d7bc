"""Student networks built from a teacher's EDM network.

Consistency student: the teacher's network with boundary_sigma = sigma_min_shift, so f(x, s) = x holds by
construction; c_skip/c_out change only near s, so at initialisation it is (almost) the teacher as a 1-step map.

MeanFlow student u(z, r, t) in flow-matching time (z = x / (1 + sigma), t = sigma / (1 + sigma)): the teacher's
EDM network evaluated at t, plus an embedding of the gap t - r added to its time embedding. That embedding's
last layer starts at zero, so at initialisation u(z, r, t) is the teacher's instantaneous velocity for every r.
Its forward is u itself (so DDP sees the call it trains); `MeanFlowDenoiser` wraps it in the denoiser seam as
the one-step map to r = 0, so samplers and evaluation treat both kinds of student alike.
"""

from __future__ import annotations

import copy

import torch

from ..teachers.base import Denoiser, sigma_column
from ..teachers.edm import EDMDenoiser


def consistency_student(teacher: EDMDenoiser, sigma_min_shift: float = 0.003) -> EDMDenoiser:
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    student.precond.boundary_sigma = sigma_min_shift
    return student


class MeanFlowStudent(torch.nn.Module):
    def __init__(self, net: EDMDenoiser, gap_scale: float = 1000.0):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding

        self.net, self.gap_scale = net, gap_scale
        self.shape, self.num_classes = net.shape, net.num_classes
        te = net.backbone.time_embedding
        self.gap_embedding = TimestepEmbedding(te.linear_1.in_features, te.linear_2.out_features)
        torch.nn.init.zeros_(self.gap_embedding.linear_2.weight)
        torch.nn.init.zeros_(self.gap_embedding.linear_2.bias)
        self._gap = None
        te.register_forward_hook(self._add_gap)

    def _add_gap(self, module, inputs, out):
        if self._gap is None:
            return out
        emb = self.net.backbone.time_proj(self._gap * self.gap_scale).to(out.dtype)
        return out + self.gap_embedding(emb)

    def forward(self, z, r, t, class_labels=None):
        """Average velocity u(z, r, t) = (z_t - z_r) / (t - r) predicted at z = z_t; r, t floats or (B,)."""
        t_col = sigma_column(t, z).float()
        r_col = sigma_column(r, z).float()
        sigma = t_col / (1 - t_col)
        x = z.float() * (1 + sigma)
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
        t = s / (1 + s)
        z = x.float() / (1 + s)
        return (z - t * self.student(z, 0.0, t.flatten(), class_labels).float()).to(x.dtype)

    def describe(self) -> dict:
        return self.student.describe()


def as_denoiser(model: torch.nn.Module) -> Denoiser:
    """Any trained network through the denoiser seam (students of both kinds, teachers)."""
    return MeanFlowDenoiser(model) if isinstance(model, MeanFlowStudent) else model
