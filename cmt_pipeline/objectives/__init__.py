"""Training objectives, one file each. The seam the training loop calls:

    objective(model, batch, step) -> (scalar loss, {name: float or 0-d tensor to log})

`model` is the (possibly DDP-wrapped) network being trained, `batch` one micro-batch dict already on the
device, `step` the 1-based optimizer step (for schedules). Randomness comes from torch's global generator,
which the loop reseeds from (seed, step, rank) before every step, so objectives need no RNG state of their own.
"""

from .edm import EDMLoss

__all__ = ["EDMLoss"]
