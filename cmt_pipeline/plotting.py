"""Pictures of samples: a PNG grid for image-shaped samples, a scatter plot for low-dimensional ones (gmm2d).

Shared by pre-training (sample grids during training) and evaluation (the grid next to every metrics file);
people judge a generator faster from a picture than from a number.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .utils import atomic_write_bytes


def to_uint8(images) -> np.ndarray:
    """(N, C, H, W) floats in [-1, 1] -> (N, H, W, C) uint8, rounding like an image file would."""
    x = torch.as_tensor(images).detach().float().cpu()
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def save_grid(images, path, nrow: int | None = None, scale: int | None = None, pad: int = 1) -> None:
    """Tile (N, C, H, W) images in [-1, 1] (C = 1 or 3) into one PNG; tiny images are enlarged (nearest)
    to about 32 pixels so 8x8 digits stay legible."""
    x = to_uint8(images)
    n, h, w, c = x.shape
    if c not in (1, 3):
        raise ValueError(f"save_grid needs 1 or 3 channels, got {c}")
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    scale = scale or max(1, 32 // max(h, w))
    canvas = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = x[i]
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    _write(path, buf.getvalue())


def save_scatter(points, path, reference=None, title: str = "") -> None:
    """Scatter the first two coordinates of (N, ...) samples, optionally over reference points (e.g. exact
    mixture samples): the picture for 2-D mixtures, where a grid of 2x1x1 'images' says nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    if reference is not None:
        ref = torch.as_tensor(reference).reshape(len(reference), -1)[:, :2].cpu().numpy()
        ax.scatter(ref[:, 0], ref[:, 1], s=2, c="0.7", label="reference")
    pts = torch.as_tensor(points).reshape(len(points), -1)[:, :2].float().cpu().numpy()
    ax.scatter(pts[:, 0], pts[:, 1], s=2, c="C0", label="samples")
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    if reference is not None:
        ax.legend(loc="upper right", fontsize=7, markerscale=4)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    _write(path, buf.getvalue())


def save_samples(samples, path, reference=None, title: str = "") -> None:
    """The right picture for the sample shape: a grid for images (H, W >= 4), else a scatter plot."""
    if samples.ndim == 4 and min(samples.shape[2:]) >= 4:
        save_grid(samples, path)
    else:
        save_scatter(samples, path, reference, title)


def _write(path, png: bytes) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, png)
