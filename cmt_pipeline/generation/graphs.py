"""The teacher's forward replayed as a CUDA graph (`generate-trajectories --cuda-graphs`).

Why: a small network on a GPU is bound by launching its kernels one by one from Python; a captured graph launches
all of a forward's kernels at once, and the host is free again in microseconds.

Bytes: a replay runs the kernels the eager forward runs, on the same values: x is copied into the graph's input,
sigma filled into a 0-d tensor of x's dtype exactly as `sigma_column` fills a Python sigma, labels copied. That is
checked, not assumed: the first `check` calls of each captured graph are also run eagerly and compared bit for bit,
and a mismatch, or a teacher that cannot be captured (a host sync, a data-dependent shape), puts the rest of the
run back on the eager forward with a one-line note. No torch.compile: it may fuse ops and change the bytes.
"""

from __future__ import annotations

import numbers
import sys

import torch
from tqdm.auto import tqdm

BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def cuda_capture(forward):
    """(replay, out): `forward()` captured as a CUDA graph; replay() refills `out`. The warm-up runs on a side
    stream, as torch.cuda.graphs asks: lazy initialisation and library workspaces must not land in the graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            forward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = forward()
    return graph.replay, out


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit, NaN and -0.0 included (torch.equal compares values)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(BITS[a.element_size()]),
                                                                     b.view(BITS[b.element_size()]))


class Replay:
    """One captured forward, for one batch shape: static input buffers, and the output the graph writes."""

    def __init__(self, teacher, x: torch.Tensor, class_labels, capture):
        self.x = x.clone()
        self.sigma = torch.ones((), dtype=x.dtype, device=x.device)
        self.labels = None if class_labels is None else class_labels.clone()
        self.replay, self.out = capture(lambda: teacher(self.x, self.sigma, self.labels))
        self.checked = 0

    def __call__(self, x, sigma: float, class_labels):
        self.x.copy_(x)
        self.sigma.fill_(sigma)  # the value sigma_column's torch.full would make
        if self.labels is not None:
            self.labels.copy_(class_labels)
        self.replay()
        return self.out.clone()  # the solver keeps several outputs; the next replay overwrites this one


class GraphedTeacher:
    """D(x, sigma, class_labels) as the teacher computes it, through one captured graph per batch shape."""

    def __init__(self, teacher, check: int, capture=cuda_capture):
        self.teacher, self.check, self.capture = teacher, check, capture
        self.shape, self.num_classes = teacher.shape, teacher.num_classes
        self.replays: dict[tuple, Replay] = {}
        self.eager = False

    def give_up(self, why: str) -> None:
        tqdm.write(f"note: --cuda-graphs: the teacher's forward {why}; running it eagerly (same bytes, no graphs)",
                   file=sys.stderr)
        self.eager, self.replays = True, {}

    def __call__(self, x, sigma, class_labels=None):
        if self.eager or not isinstance(sigma, numbers.Real):
            return self.teacher(x, sigma, class_labels)
        key = (tuple(x.shape), class_labels is not None)
        if key not in self.replays:
            try:
                self.replays[key] = Replay(self.teacher, x, class_labels, self.capture)
            except Exception as e:  # noqa: BLE001 - whatever stops a capture, the eager forward still works
                self.give_up(f"could not be captured ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
                return self.teacher(x, sigma, class_labels)
        replay = self.replays[key]
        out = replay(x, sigma, class_labels)
        if replay.checked < self.check:
            replay.checked += 1
            eager = self.teacher(x, sigma, class_labels)
            if not same_bits(out, eager):
                self.give_up("replayed as a graph gives other bytes than run eagerly")
                return eager
        return out
