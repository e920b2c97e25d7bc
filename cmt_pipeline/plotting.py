"""Pictures people would rather look at than read: image grids of samples, written as PNG."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from .files import atomic_write_bytes


def write_png(path, save) -> None:
    """The one way a picture reaches disk: save(buffer) renders the PNG, the file appears whole (atomically), and
    its folder is made if missing."""
    buf = io.BytesIO()
    save(buf)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def save_image_grid(images: torch.Tensor, path, nrow: int | None = None, min_tile: int = 32, pad: int = 1) -> None:
    """Tile (N, C, H, W) images in [-1, 1] into one PNG (grey for C = 1); tiny images are upscaled (nearest)
    so each tile is at least `min_tile` pixels wide. Written atomically."""
    from PIL import Image

    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    canvas = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = \
            x[i].permute(1, 2, 0).numpy()
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    scale = max(1, math.ceil(min_tile / w))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    write_png(path, lambda buf: img.save(buf, format="PNG"))


def save_scatter(points: torch.Tensor, path, reference: torch.Tensor | None = None, title: str = "") -> None:
    """Scatter the first two coordinates of (N, ...) samples over optional reference points (e.g. exact mixture
    samples): the picture for low-dimensional data such as gmm2d, where an image grid says nothing."""
    from matplotlib.figure import Figure  # heavy; only when a scatter is drawn

    fig = Figure(figsize=(4, 4), dpi=100)  # not pyplot: no backend to pick, no global figure registry
    ax = fig.subplots()
    for pts, style in ((reference, dict(c="0.7", label="reference")), (points, dict(c="C0", label="samples"))):
        if pts is not None:
            p = torch.as_tensor(pts).reshape(len(pts), -1)[:, :2].double().cpu().numpy()
            ax.scatter(p[:, 0], p[:, 1], s=2, **style)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper right", fontsize=7, markerscale=4)
    write_png(path, lambda buf: fig.savefig(buf, format="png", bbox_inches="tight"))


def save_curves(path, panels: dict, xlabel: str = "step", ylabel: str = "", target: float | None = None) -> None:
    """Log-scale curves, one panel per `panels` entry ({title: {label: (steps, values[, lo, hi])}}) side by side:
    the one plotter for loss, held-out error and benchmark curves. A (lo, hi) band shades the spread over seeds;
    `target` draws a dotted reference line; None labels draw no legend. Written atomically."""
    from matplotlib.figure import Figure  # heavy; only when curves are drawn

    fig = Figure(figsize=(4.5 * len(panels), 3.2), dpi=120)  # not pyplot: no backend to pick, no figure registry
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, series) in zip(axes, panels.items()):
        for label, (steps, values, *band) in series.items():
            ax.plot(steps, values, marker="o" if len(steps) <= 64 else None, ms=3, label=label)
            if band:
                ax.fill_between(steps, *band, alpha=0.2)
        if target is not None:
            ax.axhline(target, color="0.5", ls=":", lw=1, label="target")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        if any(label is not None for label in series) or target is not None:
            ax.legend(fontsize=7)
    axes[0].set_ylabel(ylabel)
    fig.tight_layout()
    write_png(path, lambda buf: fig.savefig(buf, format="png"))
