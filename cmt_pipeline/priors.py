"""Per-sample seeded noise: what generation and sampling both draw their inputs from.

Sample i's prior noise and label come from a CPU generator seeded by (seed, i) alone, and its re-noising noise
from a side stream (seed, i, RENOISE), so a sample never depends on the batch size, the worker count or the device.
Kept apart from generation/ so that importing a sampler does not pull in the stores (zarr, webdataset).
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import CMTError
from .utils import sample_seed

RENOISE, REFERENCE = 1, 2  # side streams: re-noising noise; a reference set (e.g. exact mixture samples)


def draw_priors(seed: int, indices, shape, num_classes: int, class_labels: str):
    """Unit prior noise (n, C, H, W) float32 and labels (n,) int64 for global sample indices, batch-independent."""
    noise = np.empty((len(indices), *shape), np.float32)
    labels = np.full(len(indices), -1, np.int64)
    for j, i in enumerate(indices):
        g = torch.Generator().manual_seed(sample_seed(seed, int(i)))
        noise[j] = torch.randn(shape, generator=g).numpy()
        if num_classes:
            labels[j] = torch.randint(num_classes, (1,), generator=g).item() if class_labels == "random" \
                else int(class_labels)
    return noise, labels


def stream_seed(seed: int, index: int, stream: int) -> int:
    """A 63-bit seed for sample `index` of side stream `stream` (RENOISE, REFERENCE) of a run seeded `seed`;
    a different SeedSequence entropy (three words) from any prior seed (utils.sample_seed: two)."""
    return int(np.random.SeedSequence([seed, index, stream]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def draw_renoise(seed: int, indices, shape, steps: int) -> np.ndarray:
    """(n, steps, C, H, W) unit noise for re-noising, from a per-sample stream distinct from the prior's."""
    out = np.empty((len(indices), steps, *shape), np.float32)
    for j, i in enumerate(indices):
        g = torch.Generator().manual_seed(stream_seed(seed, int(i), RENOISE))
        out[j] = torch.randn((steps, *shape), generator=g).numpy()
    return out


def check_class_labels(class_labels: str, num_classes: int, who: str = "generator") -> None:
    """The --class-labels values draw_priors understands for a `who` with `num_classes` classes (0 = unconditional):
    random or none for an unconditional one, random or a class index for a conditional one; CMTError otherwise."""
    if not num_classes:
        if class_labels not in ("random", "none"):
            raise CMTError(f"--class-labels {class_labels} given, but the {who} is unconditional; drop the option")
        return
    if class_labels == "none":
        raise CMTError(f"the {who} is class-conditional ({num_classes} classes); use --class-labels random or a "
                       "class index")
    if class_labels != "random" and not (class_labels.isdigit() and int(class_labels) < num_classes):
        raise CMTError(f"--class-labels must be random or a class in 0..{num_classes - 1}, got {class_labels!r}")
