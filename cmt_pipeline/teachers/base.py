"""The denoiser seam: every teacher and every student is D(x, sigma, class_labels) -> x0_hat in EDM form.

EDM form means x_sigma = x0 + sigma * eps and D estimates E[x0 | x_sigma]; solvers, stores and
trainers only ever see this interface, whatever parametrisation the underlying network was trained in.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from contextlib import contextmanager

import torch


MAX_SIDE = 4096  # pixels (or latents) per side: past any published diffusion model (1024-pixel, 128-latent)
MAX_CHANNELS = 256  # input channels: past any published latent space (4, 16, 64 packed)


def sample_shape(config) -> tuple[int, int, int]:
    """(C, H, W) of a diffusers model's config (`in_channels`, `sample_size`: a side or a pair), refused with a
    ValueError naming the field when out of bounds: checked before the model is built, since a transformer
    allocates its position embeddings for that size, and a million-pixel side would exhaust memory."""
    size, c = config.get("sample_size"), config.get("in_channels")
    size = list(size) if isinstance(size, (list, tuple)) else [size] * 2
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE for v in size):
        raise ValueError(f"config.json's sample_size {config.get('sample_size')!r} is not a side (or a pair of "
                         f"sides) in 1..{MAX_SIDE}")
    if not (isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= MAX_CHANNELS):
        raise ValueError(f"config.json's in_channels {c!r} is not a count in 1..{MAX_CHANNELS}")
    return c, size[0], size[1]


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


@contextmanager
def quiet_libraries():
    """diffusers' logged notices and Python warnings silenced while a model folder loads: a refusal must stay one
    line, and some notices mislead ("Defaulting to unsafe serialization" for a .bin that diffusers reads with
    torch.load(weights_only=True)). What matters reaches the user as the exception the loader raises."""
    import warnings

    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(diffusers_logging.CRITICAL)  # it logs a missing safetensors file as an error
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        diffusers_logging.set_verbosity(level)
