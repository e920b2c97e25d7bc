"""The denoiser seam: every teacher and every student is D(x, sigma, class_labels) -> x0_hat in EDM form.

EDM form means x_sigma = x0 + sigma * eps and D estimates E[x0 | x_sigma]; solvers, stores and
trainers only ever see this interface, whatever parametrisation the underlying network was trained in.
"""

from __future__ import annotations

import hashlib
import json
import numbers

import torch


def sigma_column(sigma, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a float, 0-d or (B,) sigma to shape (B, 1, 1, 1) in x's dtype and device. A Python number becomes
    a fill on x's device, not a host tensor copied there: that copy would wait for the device at every solver step."""
    if isinstance(sigma, numbers.Real):
        sigma = torch.full((), float(sigma), dtype=x.dtype, device=x.device)
    else:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


def hash_weights(h, module: torch.nn.Module) -> None:
    """Feed every parameter and buffer of `module`, by sorted name, into the hash `h`: a network's identity."""
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu()
        h.update(name.encode())
        h.update((t.float() if t.dtype == torch.bfloat16 else t).contiguous().numpy().tobytes())  # numpy has no bf16


class Denoiser(torch.nn.Module):
    """Base class: subclasses set `shape` (C, H, W), `num_classes` (0 = unconditional) and define
    `forward(x, sigma, class_labels=None) -> x0_hat`."""

    shape: tuple[int, int, int]
    num_classes: int = 0

    def describe(self) -> dict:
        """A JSON-able description recorded in every dataset made with this teacher."""
        return {"kind": type(self).__name__, "shape": list(self.shape), "num_classes": self.num_classes}

    def fingerprint(self) -> str:
        """sha256 of the description and every parameter/buffer: names the exact teacher a dataset came from."""
        h = hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode())
        hash_weights(h, self)
        return h.hexdigest()

    def check_labels(self, class_labels: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if self.num_classes == 0:
            return None
        if class_labels is None:
            raise ValueError(f"this teacher is class-conditional ({self.num_classes} classes): pass class_labels")
        return class_labels.reshape(batch).long()
