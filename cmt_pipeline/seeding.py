"""Random streams: per-sample seeds, so sample i never depends on the batch it is drawn in, and seeded blocks that
leave everyone else's stream alone."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch


def sample_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for sample `index` of a run seeded `seed` (no collisions across seeds)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


@contextmanager
def seeded(seed: int):
    """Run the block on torch's CPU generator seeded `seed`, then restore it: for draws that take no generator
    (a module constructor's weight init), so seeding one build leaves everyone else's random stream alone."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield
