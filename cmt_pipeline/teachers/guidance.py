"""Classifier-free guidance behind the denoiser seam: D_w(x, s, c) = D(x, s, null) + w (D(x, s, c) - D(x, s, null)).

Guiding the EDM-form denoiser is exactly guiding the network's own output: epsilon, v, x0 and flow-matching
velocity predictions are each affine in D at fixed (x, sigma) with the same coefficients for both halves, so
the guided D is the D of the guided prediction. Both halves run as one batch of 2B.

The null label is the model's own "no class" row where it has one (DiT's label embedding trained with label
dropout), or a class index the user reserved for it in training (`null_label`); a reserved last class is then
no longer drawn as a label.
"""

from __future__ import annotations

import torch

from .base import Denoiser, sigma_column


class GuidedDenoiser(Denoiser):
    def __init__(self, inner: Denoiser, scale: float, null_label: int):
        super().__init__()
        self.inner, self.scale, self.null_label = inner, float(scale), int(null_label)
        self.shape = inner.shape
        self.num_classes = self.null_label if self.null_label == inner.num_classes - 1 else inner.num_classes

    def forward(self, x, sigma, class_labels=None):
        labels = self.check_labels(class_labels, x.shape[0])
        sigma = sigma_column(sigma, x).reshape(-1)
        both = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]),
                          torch.cat([labels, torch.full_like(labels, self.null_label)]))
        cond, uncond = both.chunk(2)
        return uncond + self.scale * (cond - uncond)

    def describe(self) -> dict:
        return {**self.inner.describe(), "num_classes": self.num_classes,
                "guidance": {"scale": self.scale, "null_label": self.null_label}}


def guided(teacher: Denoiser, scale: float, null_label: int | None) -> Denoiser:
    """`teacher` with guidance `scale` (1 = none: the teacher itself); ValueError naming the fix on misuse."""
    if scale == 1.0 and null_label is None:
        return teacher
    if not teacher.num_classes:
        raise ValueError("guidance needs a class-conditional teacher; this one is unconditional "
                         "(drop --guidance-scale / --null-label)")
    if scale < 0:
        raise ValueError(f"--guidance-scale must be >= 0 (1 = no guidance), got {scale}")
    builtin = getattr(teacher, "null_label", None)
    null = builtin if null_label is None else null_label
    if null is None:
        raise ValueError(f"this teacher has no built-in null label; pass --null-label, the class index its "
                         f"training used for 'no class' (the last one, {teacher.num_classes - 1}, if reserved)")
    if null not in (builtin, teacher.num_classes - 1):
        allowed = sorted({teacher.num_classes - 1} | ({builtin} if builtin is not None else set()))
        raise ValueError(f"--null-label {null} is neither the model's null row nor its last class; use one of "
                         f"{allowed}")
    return GuidedDenoiser(teacher, scale, null)
