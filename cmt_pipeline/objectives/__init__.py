"""Training objectives, one file each. The seam the training loop calls:

    objective(model, batch, step) -> (scalar loss, {name: float or 0-d tensor to log})

`model` is the (possibly DDP-wrapped) network being trained, `batch` one micro-batch dict already on the
device, `step` the 1-based optimizer step (for schedules). Randomness comes from torch's global generator,
which the loop reseeds from (seed, step, rank) before every step, so objectives need no RNG state of their own.
"""

import dataclasses

from .edm import EDMLoss


def from_config(cls, cfg, **given):
    """The objective `cls` with each field read by name from `cfg` (a config dataclass), except those `given` (what
    the config cannot know: a store's sigmas, the student's sigma_data): every default lives on its config field."""
    return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)
                  if f.name not in given and (hasattr(cfg, f.name) or f.default is dataclasses.MISSING)}, **given)


__all__ = ["EDMLoss", "from_config"]
