"""ODE solvers over the denoiser seam. Each is `solver(denoiser, x, sigmas, class_labels) -> sample`, the state at
sigmas[-1]; with `return_intermediates=True` it returns states of shape (len(sigmas), B, ...), states[i] the state
at sigmas[i] (states[0] = x, states[-1] the sample).
"""

from __future__ import annotations

from functools import partial

from .dpmpp import dpmpp
from .euler import euler
from .grids import GRIDS, karras_grid, logsnr_grid, make_grid
from .heun import heun

SOLVERS = {
    "euler": euler,
    "heun": heun,
    "dpm2": partial(dpmpp, order=2),
    "dpm3": partial(dpmpp, order=3),
}
NFE_PER_STEP = {"euler": 1, "heun": 2, "dpm2": 1, "dpm3": 1}
# Bump when a solver's arithmetic changes, even at round-off: the stored states change with it, so a store's plan
# records the revision and a resume by a cmt of another revision is refused (2: dpmpp's fused linear step).
SOLVER_REVISION = 2

__all__ = ["SOLVERS", "NFE_PER_STEP", "SOLVER_REVISION", "GRIDS", "get_solver", "make_grid", "logsnr_grid", "karras_grid"]


def get_solver(name: str):
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS)}")
    return SOLVERS[name]
