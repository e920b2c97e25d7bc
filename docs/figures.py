"""Draws docs/images/concepts.png: teacher trajectories on the gmm2d mixture and what mid-training regresses.

    python docs/figures.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from cmt_pipeline.solvers import SOLVERS, logsnr_grid  # noqa: E402
from cmt_pipeline.teachers.gmm import gmm2d  # noqa: E402


def main(out=Path(__file__).parent / "images" / "concepts.png"):
    teacher = gmm2d()
    sig = logsnr_grid(16)
    prior = torch.randn(10, 2, 1, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    states = SOLVERS["dpm3"](teacher, 80 * prior, sig, return_intermediates=True)[:, :, :, 0, 0]  # (17, 10, 2)
    vp = states / (1 + sig.view(-1, 1, 1) ** 2).sqrt()  # variance-preserving scaling keeps noise in view
    modes = teacher.means.numpy()
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), dpi=110)
    titles = ["1. teacher ODE trajectories (stored: 16 states + x0)",
              "2. mid-training: every state -> its endpoint",
              "3. post-training + sampling: 1 or 2 jumps"]
    for ax, title in zip(axes, titles):
        ax.scatter(modes[:, 0], modes[:, 1], s=250, c="0.9", zorder=0)
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    for n in range(vp.shape[1]):
        axes[0].plot(vp[:, n, 0], vp[:, n, 1], "-o", ms=2, lw=0.8, c=f"C{n}")
        for i in range(0, 16, 3):
            axes[1].annotate("", xy=vp[-1, n].tolist(), xytext=vp[i, n].tolist(),
                             arrowprops=dict(arrowstyle="->", lw=0.6, color=f"C{n}", alpha=0.7))
        axes[1].plot(vp[:16, n, 0], vp[:16, n, 1], "o", ms=2, c=f"C{n}")
        mid = vp[-1, n] * 0.8 + vp[0, n] * 0.2  # schematic: re-noise to sigma_mid, jump again
        axes[2].annotate("", xy=vp[-1, n].tolist(), xytext=vp[0, n].tolist(),
                         arrowprops=dict(arrowstyle="->", lw=0.8, color=f"C{n}"))
        axes[2].plot(*vp[0, n].tolist(), "o", ms=3, c=f"C{n}")
        axes[2].plot(*mid.tolist(), "x", ms=4, c=f"C{n}")
    axes[2].text(0.02, 0.02, "o prior x_T   x re-noised x_mid (2-step)", transform=axes[2].transAxes, fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    print(out)


if __name__ == "__main__":
    main()
