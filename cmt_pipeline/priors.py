"""Per-sample seeded noise: what generation and sampling both draw their inputs from.

Sample i's prior noise and label come from a CPU generator seeded by (seed, i) alone, and its re-noising noise
from a side stream (seed, i, RENOISE), so a sample never depends on the batch size, the worker count or the device.
Kept apart from generation/ so that importing a sampler does not pull in the stores (zarr, webdataset).

The streams are torch's CPU Mersenne Twister with its Box-Muller kernel, one generator per sample; what is batched
is everything around that kernel: the per-sample seeds are hashed for all indices at once (`seed_words`, numpy's
SeedSequence done column-wise, ~100x cheaper than one SeedSequence per sample) and each draw is written in place
into one preallocated batch. Replacing torch's kernel by a numpy re-implementation would not keep the bytes: its
log/sincos are CPU-dispatch dependent SIMD code.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import CMTError

RENOISE, REFERENCE = 1, 2  # side streams: re-noising noise; a reference set (e.g. exact mixture samples)

# numpy.random.SeedSequence's hash constants (numpy/random/bit_generator.pyx), pool of 4 uint32 words
_POOL, _INIT_A, _MULT_A, _INIT_B, _MULT_B = 4, 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715


def _words(value: int) -> list[int]:
    """A non-negative int as SeedSequence coerces it: little-endian uint32 words, at least one."""
    if value < 0:
        raise CMTError(f"seeds and sample indices must be >= 0, got {value}; pass a non-negative seed")
    out = [value & 0xFFFFFFFF]
    while value >> 32:
        value >>= 32
        out.append(value & 0xFFFFFFFF)
    return out


def seed_words(seed: int, indices, *stream: int) -> np.ndarray:
    """uint64 seeds, one per index: np.random.SeedSequence([seed, index, *stream]).generate_state(2, uint64)[0] >> 1,
    computed for all indices at once (the per-sample seeds of `sample_seed` and `stream_seed`)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(idx) and (idx.min() < 0 or idx.max() >= 2**32):
        raise CMTError("sample indices must lie in [0, 2**32); split the run into smaller ones")
    n = len(idx)
    columns = [np.full(n, w, np.uint32) for w in _words(seed)] + [idx.astype(np.uint32)]
    columns += [np.full(n, w, np.uint32) for s in stream for w in _words(s)]
    hash_const = np.uint32(_INIT_A)

    def hashmix(value):
        nonlocal hash_const
        value = value ^ hash_const
        hash_const = np.uint32((int(hash_const) * _MULT_A) & 0xFFFFFFFF)
        value = value * hash_const
        return value ^ (value >> np.uint32(16))

    def mix(x, y):
        r = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y
        return r ^ (r >> np.uint32(16))

    zero = np.zeros(n, np.uint32)
    pool = [hashmix(columns[i] if i < len(columns) else zero) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(_POOL, len(columns)):
        for dst in range(_POOL):
            pool[dst] = mix(pool[dst], hashmix(columns[src]))
    state, hash_b = [], _INIT_B
    for i in range(2):  # the first uint64 of generate_state(2, np.uint64): its two low uint32 words
        value = pool[i] ^ np.uint32(hash_b)
        hash_b = (hash_b * _MULT_B) & 0xFFFFFFFF
        value = value * np.uint32(hash_b)
        state.append(value ^ (value >> np.uint32(16)))
    return (state[0].astype(np.uint64) | (state[1].astype(np.uint64) << np.uint64(32))) >> np.uint64(1)


def _draw(seeds: np.ndarray, shape, labels_from: int = 0):
    """randn(shape) from a CPU generator seeded with each of `seeds`, stacked; with labels_from > 0 also a
    randint(labels_from) from the same generator right after the noise (-1 otherwise)."""
    noise = torch.empty((len(seeds), *shape), dtype=torch.float32)
    labels = torch.full((len(seeds),), -1, dtype=torch.int64)
    g = torch.Generator()
    for j, s in enumerate(seeds.tolist()):
        g.manual_seed(s)
        torch.randn(shape, generator=g, out=noise[j])
        if labels_from:
            torch.randint(labels_from, (1,), generator=g, out=labels[j:j + 1])
    return noise.numpy(), labels.numpy()


def draw_priors(seed: int, indices, shape, num_classes: int, class_labels: str):
    """Unit prior noise (n, C, H, W) float32 and labels (n,) int64 for global sample indices, batch-independent."""
    random = bool(num_classes) and class_labels == "random"
    noise, labels = _draw(seed_words(seed, indices), tuple(shape), num_classes if random else 0)
    if num_classes and not random:
        labels[:] = int(class_labels)
    return noise, labels


def stream_seed(seed: int, index: int, stream: int) -> int:
    """A 63-bit seed for sample `index` of side stream `stream` (RENOISE, REFERENCE) of a run seeded `seed`;
    a different SeedSequence entropy (three words) from any prior seed (seeding.sample_seed: two)."""
    return int(seed_words(seed, [index], stream)[0])


def draw_renoise(seed: int, indices, shape, steps: int) -> np.ndarray:
    """(n, steps, C, H, W) unit noise for re-noising, from a per-sample stream distinct from the prior's."""
    return _draw(seed_words(seed, indices, RENOISE), (steps, *tuple(shape)))[0]


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
