"""What readers check in the data itself: finite values, and the shapes and dtypes the plan promises.

A NaN or inf in a trajectory would train a student to NaN with exit 0, so generation refuses to store one (unless
told --allow-nonfinite) and every reader refuses to serve one. Shapes are checked because a store's files can
be edited or swapped independently of its plan.
"""

from __future__ import annotations

import numpy as np

from ..errors import CMTError
from .layout import sample_arrays

MAX_NAMED = 8  # sample indices named in an error


def nonfinite_samples(arrays: dict) -> np.ndarray:
    """Global indices of the samples holding a NaN or inf in any float array (arrays as a shard's)."""
    bad = np.zeros(len(arrays["index"]), dtype=bool)
    for a in arrays.values():
        if np.issubdtype(a.dtype, np.floating):
            bad |= ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
    return np.asarray(arrays["index"])[bad]


def name_samples(indices) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:MAX_NAMED])
    return f"{len(indices)} sample(s) ({shown}{', ...' if len(indices) > MAX_NAMED else ''})"


def require_finite(arrays: dict, root) -> None:
    """Refuse arrays with a non-finite value: the one line names the samples and the command that finds them all."""
    bad = nonfinite_samples(arrays)
    if len(bad):
        raise CMTError(f"{root} holds NaN or inf values in {name_samples(bad)}; it cannot be trained on: "
                       f"`cmt verify {root}` lists every affected shard, regenerate with a working teacher")


def require_shapes(arrays: dict, plan: dict, root) -> None:
    """Refuse arrays (a shard's or a batch's: samples first) whose per-sample shape or dtype is not the plan's."""
    for name, (tail, dt) in sample_arrays(plan).items():
        a = arrays.get(name)
        if a is not None and (a.shape[1:] != tail or a.dtype != np.dtype(dt)):
            raise CMTError(f"{root}: {name} holds {a.dtype} samples of shape {a.shape[1:]}, the plan says {dt} "
                           f"{tail}; the store is damaged, run `cmt verify {root}`")
