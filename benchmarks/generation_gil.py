"""What the generation loop costs the compute thread: its GIL-blocked share, and its CPU time against the forwards.

A launch-bound fake teacher (--ops small elementwise torch ops per forward, on a batch of 4x16x16 latents) is
driven through the real generation loop (`generate`, one thread, on the CPU) while the writer encodes Zarr shards,
then called alone for the same forwards. The main thread's CPU clock gives its time on a CPU, and
/proc/thread-self/schedstat its time waiting for one; the rest of its wall time it was blocked. Inside a forward, which only computes, it
blocks only on the GIL. Reported, median of --repeats alternating pairs:
  blocked_share   (wall - on CPU - runnable) / wall of the main thread inside the teacher's forwards during
                  generate(): the share of its compute time lost to the GIL                       (goal <= 1%)
  blocks_per_forward  how often, per forward, it blocked (voluntary context switches)
  bare_...        the same for the bare forwards, with no writer and no other thread: the floor of the
                  measurement (a VM's or cgroup's time that is neither running nor queued shows as blocked)
  cpu_ratio       main-thread CPU seconds of all of generate() (setup, priors, solver, sending, tail) / of the
                  bare forwards                                                                   (goal <= 1.05)
  own_ratio       the same over the CPU seconds of the forwards inside that generate(): the loop's own work
                  on the main thread, free of the difference between two runs of the same forwards
The CPU ratios come from a second generate() whose forwards read only the thread's CPU clock (reading /proc
around each forward costs ~0.15 ms, a tenth of a 300-op forward, and would flatter the ratio). CPU seconds do
not grow with the machine's load, so the ratios hold on a shared machine; the blocked share is only what the
GIL and the writer leave, as waiting for a core counts as runnable.

    python benchmarks/generation_gil.py                    # this checkout
    PYTHONPATH=/tmp/old python benchmarks/generation_gil.py --label before   # another checkout's generate()
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import cmt_pipeline.generation.run as run
from cmt_pipeline.config import GenerateConfig
from cmt_pipeline.constants import SIGMA_MAX
from cmt_pipeline.generation import Worker, generate
from cmt_pipeline.solvers import NFE_PER_STEP

SCHEDSTAT, STATUS = Path("/proc/thread-self/schedstat"), Path("/proc/thread-self/status")


class LaunchBound(torch.nn.Module):
    """A denoiser of `ops` small elementwise ops: its cost is launching them, as a small network's on a GPU."""

    shape, num_classes = (4, 16, 16), 0

    def __init__(self, ops: int):
        super().__init__()
        self.ops = ops
        self.schedstat = True  # read /proc per forward (blocked share); else only the thread's CPU clock, cheap
        self.clock = [0.0, 0.0, 0.0, 0]  # thread_clock() inside forwards, summed

    def forward(self, x, sigma, labels=None):
        t0 = thread_clock() if self.schedstat else time.thread_time()
        y = x / (1 + float(sigma) ** 2) ** 0.5
        for _ in range(self.ops // 2):
            y = y * 0.999 + 0.0001
        if self.schedstat:
            self.clock = [a + b for a, b in zip(self.clock, since(t0))]
        else:
            self.clock[1] += time.thread_time() - t0
        return y

    def describe(self) -> dict:
        return {"kind": "launch-bound fake", "ops": self.ops}

    def fingerprint(self) -> str:
        return f"launch-bound-{self.ops}"


def thread_clock() -> tuple[float, float, float, int]:
    """(wall, on CPU, runnable but waiting for a CPU) seconds of the calling thread so far, and how often it
    blocked (voluntary context switches: waiting for the GIL is one)."""
    wait = int(SCHEDSTAT.read_text().split()[1]) / 1e9  # its first field lags for a running thread: not used
    blocks = int(STATUS.read_text().split("voluntary_ctxt_switches:")[1].split()[0])
    return time.perf_counter(), time.thread_time(), wait, blocks


def since(t0) -> tuple[float, float, float]:
    return tuple(b - a for a, b in zip(t0, thread_clock()))


@torch.no_grad()
def bare(teacher, n: int, batch: int, nfe: int) -> tuple[float, float, float]:
    x = torch.randn(batch, *teacher.shape)
    teacher.clock, t0 = [0.0, 0.0, 0.0, 0], thread_clock()
    for _ in range(n // batch):
        for i in range(nfe):
            teacher(x, SIGMA_MAX * 0.6 ** i)
    return since(t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=300)
    ap.add_argument("--num-samples", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--label", default="this checkout")
    args = ap.parse_args()
    torch.set_num_threads(1)
    teacher = LaunchBound(args.ops)
    run.load_teacher = lambda *a, **k: teacher  # the generation loop runs this teacher
    nfe = NFE_PER_STEP["dpm3"] * args.steps
    rows = []
    with tempfile.TemporaryDirectory(prefix="cmt-gil-") as tmp:
        for r in range(args.repeats):
            def once(name, schedstat):
                cfg = GenerateConfig(teacher="builtin", out=f"{tmp}/{r}-{name}", num_samples=args.num_samples,
                                     steps=args.steps, batch_size=args.batch_size, shard_size=args.shard_size,
                                     device="cpu")
                teacher.schedstat, teacher.clock, t0 = schedstat, [0.0, 0.0, 0.0, 0], thread_clock()
                generate(cfg, Worker(threads=1), progress=False)
                return since(t0), teacher.clock

            _, f = once("blocked", True)  # the blocked share, read around each forward
            b = bare(teacher, args.num_samples, args.batch_size, nfe)
            g, fc = once("cpu", False)  # CPU time, with only the thread's CPU clock read around each forward
            bc = bare(teacher, args.num_samples, args.batch_size, nfe)
            rows.append({"blocked_share": (f[0] - f[1] - f[2]) / f[0], "blocks_per_forward": f[3] / (nfe * (
                args.num_samples // args.batch_size)), "bare_blocked_share": (b[0] - b[1] - b[2]) / b[0],
                "bare_blocks_per_forward": b[3] / (nfe * (args.num_samples // args.batch_size)),
                "cpu_ratio": g[1] / bc[1], "own_ratio": g[1] / fc[1], "generate_wall_s": g[0],
                "generate_cpu_s": g[1], "forwards_cpu_s": fc[1], "bare_cpu_s": bc[1]})
    print(f"{args.label}: ops {args.ops}, {args.num_samples} samples, batch {args.batch_size}, shard "
          f"{args.shard_size}, dpm3 x {args.steps}, load average {os.getloadavg()[0]:.1f}")
    for key in rows[0]:
        print(f"  {key:16s} median {statistics.median(r[key] for r in rows):8.4f}   runs "
              + " ".join(f"{r[key]:.4f}" for r in rows))


if __name__ == "__main__":
    main()
