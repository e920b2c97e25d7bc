"""The batches' priors, drawn ahead of the compute thread in a process of their own.

Why: a sample's prior comes from its own seeded generator (priors.py), a few torch calls per sample, ~20 us each.
On the compute thread that is per-sample Python work between the teacher's launches: 3% of a launch-bound 300-op
teacher's time at batch 64, and it grows with the batch while the launches do not. A thread would take the GIL
from the compute thread instead; a process takes nothing from it.

The process is forked (like the shard writer, writer.py) with the batches, an iterable of (offset, n) in the order
the generator will ask for them (a generator is fine: the child iterates its own copy), and fills a ring of DEPTH
batches in a shared mapping ahead of it: `free` counts ring entries it may fill, `ready` entries filled. It runs one
intra-op thread and no CUDA call, as DataLoader workers do after a fork. The bytes are draw_priors' own, whatever
the ring: the stored dataset does not change.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import signal
import sys

import numpy as np

from ..errors import CMTError
from ..priors import draw_priors
from .writer import die_with_parent, slot_bytes, slot_views

DEPTH = 4  # batches drawn ahead


def ring_fields(shape, batch_size: int) -> dict[str, tuple[tuple, type]]:
    """One ring entry: a batch's unit prior noise and its labels."""
    return {"prior": ((batch_size, *shape), np.float32), "labels": ((batch_size,), np.int64)}


def fill(ring, free, ready, parent: int, batches, seed: int, shape, num_classes: int, class_labels: str) -> None:
    """The priors process: draw each batch's priors into the next ring entry once it is free."""
    import torch

    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group: the generator decides
    torch.set_num_threads(1)
    try:
        for j, (offset, n) in enumerate(batches):
            free.acquire()
            noise, labels = draw_priors(seed, np.arange(offset, offset + n, dtype=np.int64), shape, num_classes,
                                        class_labels)
            ring[j % DEPTH]["prior"][:n], ring[j % DEPTH]["labels"][:n] = noise, labels
            ready.release()
    except BaseException as e:  # noqa: BLE001 - the generator sees the exit code; this says why
        print(f"cmt: drawing the priors failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        os._exit(1)
    os._exit(0)  # nothing of the generator's (atexit handlers, buffers) is run twice


class Priors:
    """Use: `with Priors(batches, ...) as priors:`, then for each batch in order `prior, labels = priors.take()`,
    copy them out, and `priors.done()` to hand the entry back."""

    def __init__(self, batches, batch_size: int, seed: int, shape, num_classes: int, class_labels: str):
        fields = ring_fields(shape, batch_size)
        self.buf = mmap.mmap(-1, DEPTH * slot_bytes(fields))
        self.ring = slot_views(self.buf, fields, DEPTH)
        ctx = multiprocessing.get_context("fork")
        self.free, self.ready = ctx.Semaphore(DEPTH), ctx.Semaphore(0)
        self.process = ctx.Process(target=fill, args=(self.ring, self.free, self.ready, os.getpid(), batches, seed,
                                                      tuple(shape), num_classes, class_labels),
                                   name="cmt-priors", daemon=True)
        self.process.start()
        self.taken = 0

    def take(self) -> tuple[np.ndarray, np.ndarray]:
        """The next batch's prior noise and labels (views into the ring, valid until `done`)."""
        while not self.ready.acquire(timeout=1.0):
            if not self.process.is_alive():
                if self.ready.acquire(block=False):  # it filled this one, then ended
                    break
                raise CMTError(f"the priors process died (exit code {self.process.exitcode}); rerun the same "
                               "command to resume (finished shards are kept)")
        entry = self.ring[self.taken % DEPTH]
        self.taken += 1
        return entry["prior"], entry["labels"]

    def done(self) -> None:
        self.free.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.process.is_alive():
            self.process.kill()  # it only draws numbers: nothing of it needs finishing
        self.process.join()
