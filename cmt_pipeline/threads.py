"""CPU threads: how many this process may use, and running a model so that its bytes do not depend on that number.

How many: --num-threads when given; else OMP_NUM_THREADS when set; else the CPUs this process may run on (its
affinity mask, capped by a cgroup CPU quota, which is what a container's `--cpus` sets), shared among the local
processes of a launcher (LOCAL_WORLD_SIZE under torchrun/accelerate, SLURM_CPUS_PER_TASK under Slurm). Torch's own
default (every core of the machine) oversubscribes a container or a node shared by several workers, and its spinning
threads then burn CPU time while they wait for a core.

Bit-identical results: a CPU kernel may pick another blocking, hence another summation order, for another thread
count (MKL's sgemm does for a 6 x 10 @ 10 x 64 product with 2 threads), so the same batch can round differently on a
worker with more cores. `parallel_map` therefore runs every call with one intra-op thread and uses the cores by
running independent calls at once: each result depends only on its input, never on how many threads there were.

How OpenMP's idle threads wait (`openmp_wait`, applied by the CLI before torch loads): a training step is a few
hundred operators, each a parallel region, with microseconds of Python between them. Threads that sleep at once
(OMP_WAIT_POLICY=PASSIVE) are woken through the kernel at every operator: `cmt mid-train` on the digits default ran
at 5.7 steps/s on 2 quiet cores, against 7.0 when they spin for 10,000 turns first (for 9% more CPU time). On a busy machine the spinning
thread takes a core from the thread it waits for: the same run beside 4 busy processes took 2.3x the CPU time and
2.5x the wall time spinning. So they spin only on a machine that looks idle (docs/performance.md).
"""

from __future__ import annotations

import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from .errors import CMTError

SPIN_TURNS = "10000"  # libgomp's default is 300,000

CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def _env_int(env, name: str) -> int | None:
    if not env.get(name):
        return None
    try:
        value = int(env[name])
    except ValueError:
        raise CMTError(f"environment variable {name}={env[name]!r} is not an integer; fix or unset it") from None
    if value < 1:
        raise CMTError(f"environment variable {name}={value} must be at least 1; fix or unset it")
    return value


def cgroup_cpu_limit(v2: Path = CGROUP_V2, v1: tuple[Path, Path] = CGROUP_V1) -> int | None:
    """The CPU quota of this process's cgroup rounded up to whole CPUs, or None when there is none."""
    try:
        quota, period = v2.read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota, period = v1[0].read_text().strip(), v1[1].read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1") or int(period) <= 0:
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by the cgroup quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return min(cpus, limit) if limit else cpus


def default_threads(env=None) -> int:
    """This process's share of the CPUs (see the module docstring for the order of the sources)."""
    env = os.environ if env is None else env
    if (omp := _env_int(env, "OMP_NUM_THREADS")) is not None:
        return omp
    cpus = available_cpus()
    if (local := _env_int(env, "LOCAL_WORLD_SIZE")) is not None:
        return max(1, cpus // local)
    if (slurm := _env_int(env, "SLURM_CPUS_PER_TASK")) is not None:
        return max(1, min(cpus, slurm))
    return cpus


def resolve_threads(requested: int | None = None, env=None) -> int:
    """--num-threads if given (checked), else default_threads()."""
    if requested is None:
        return default_threads(env)
    if requested < 1:
        raise CMTError(f"--num-threads must be positive, got {requested}")
    return requested


def use_threads(requested: int | None = None) -> int:
    """Size torch's intra-op pool for this command; returns the number used."""
    import torch

    n = resolve_threads(requested)
    torch.set_num_threads(n)
    return n


@contextmanager
def one_thread_per_call(threads: int):
    """Yield a `map(fn, items)` that runs fn on `threads` items at once, each call with one intra-op thread, results
    in order. It is lazy, like the builtin map: it takes an item only when a thread is about to be free (at most
    threads + 1 are taken and not yet returned), so items may be costly to make (a batch slot of the writer).
    Torch's thread count is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if threads <= 1:
            yield map
        else:
            with ThreadPoolExecutor(threads, thread_name_prefix="cmt-solve", initializer=torch.set_num_threads,
                                    initargs=(1,)) as pool:
                def run(fn, items):
                    pending = deque()
                    for item in items:
                        pending.append(pool.submit(fn, item))
                        if len(pending) > threads:
                            yield pending.popleft().result()
                    while pending:
                        yield pending.popleft().result()

                yield run
    finally:
        torch.set_num_threads(before)


def openmp_wait(env=None, load: float | None = None, cpus: int | None = None) -> dict[str, str]:
    """The environment that sets how OpenMP's idle threads wait, for a process about to load torch (see the module
    docstring): spin SPIN_TURNS turns (GOMP_SPINCOUNT, read by libgomp, torch's OpenMP on Linux) when the 1-minute
    load average is below half the CPUs this process may use, else sleep at once (OMP_WAIT_POLICY=PASSIVE). Empty
    when the caller set either variable. Child processes inherit the choice with the environment."""
    env = os.environ if env is None else env
    if "OMP_WAIT_POLICY" in env or "GOMP_SPINCOUNT" in env:
        return {}
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (OSError, AttributeError):  # no load average (Windows): the choice that is safe on a busy machine
            return {"OMP_WAIT_POLICY": "PASSIVE"}
    cpus = available_cpus() if cpus is None else cpus
    return {"GOMP_SPINCOUNT": SPIN_TURNS} if load < cpus / 2 else {"OMP_WAIT_POLICY": "PASSIVE"}
