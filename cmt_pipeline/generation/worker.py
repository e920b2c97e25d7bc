"""Who am I among the generation workers, and what share of this machine is mine? Read from the launcher that
started us: no collective communication, so a dead or slow worker blocks nobody.

Identity (index, count), the shards this worker owns being those with shard % count == index:
  - explicit --worker-index/--num-workers (both or neither) win;
  - else an inner rank from the job's launcher: torchrun / `accelerate launch` (RANK, WORLD_SIZE), else Slurm
    tasks (SLURM_PROCID, SLURM_NTASKS), else one worker; when the job is one task of a Slurm array, its array
    position p of P ((SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP, SLURM_ARRAY_TASK_COUNT)
    is the outer rank: index = p * inner_count + inner_index, count = P * inner_count. So an array of
    single tasks, an array of multi-task or torchrun jobs, and one big srun/torchrun job all split the shards
    without overlap.
Device: LOCAL_RANK (torchrun, accelerate) or SLURM_LOCALID picks the GPU.
Threads: each worker uses its share of the CPUs it may run on (cmt_pipeline/threads.py), so workers sharing a
node do not oversubscribe it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..threads import resolve_threads
from ..errors import CMTError


@dataclass(frozen=True)
class Worker:
    index: int = 0
    count: int = 1
    local_rank: int = 0
    source: str = "single"
    threads: int = 0  # CPU threads of this worker; 0 = this process's share (threads.default_threads)

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            fix = ("pass --worker-index in [0, --num-workers)" if self.source == "explicit"
                   else "check the launcher's environment variables")
            raise CMTError(f"worker index {self.index} is outside 0..{self.count - 1} (from {self.source}); {fix}")

    def owns(self, shard: int) -> bool:
        return shard % self.count == self.index


def _int(env, name: str, default: int | None = None) -> int:
    if name not in env:
        return default
    try:
        return int(env[name])
    except ValueError:
        raise CMTError(f"environment variable {name}={env[name]!r} is not an integer; fix or unset it") from None


def _inner(env) -> tuple[int, int, str]:
    """This process's rank within its own job: torchrun/accelerate, Slurm tasks, or a lone process."""
    if "WORLD_SIZE" in env and "RANK" in env:
        return _int(env, "RANK"), _int(env, "WORLD_SIZE"), "torchrun"
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS"), "slurm"
    return 0, 1, "single"


def _array(env) -> tuple[int, int] | None:
    """This job's position in a Slurm array, or None outside one."""
    if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
        return None
    tid, count = _int(env, "SLURM_ARRAY_TASK_ID"), _int(env, "SLURM_ARRAY_TASK_COUNT")
    low, step = _int(env, "SLURM_ARRAY_TASK_MIN", 0), _int(env, "SLURM_ARRAY_TASK_STEP", 1)
    pos, off = divmod(tid - low, max(step, 1))
    if off or not 0 <= pos < count:
        raise CMTError(f"Slurm array task {tid} (min {low}, step {step}, count {count}) is not on one evenly "
                       "spaced range; submit the array as --array=A-B or A-B:S, or pass --worker-index/--num-workers")
    return pos, count


def worker_from_env(index: int | None = None, count: int | None = None, env=None,
                    num_threads: int | None = None) -> Worker:
    env = os.environ if env is None else env
    threads = resolve_threads(num_threads, env)
    local = _int(env, "LOCAL_RANK", _int(env, "SLURM_LOCALID", 0))
    if (index is None) != (count is None):
        raise CMTError("--worker-index and --num-workers go together; pass both or neither")
    if index is not None:
        if _int(env, "WORLD_SIZE", 1) > 1:
            raise CMTError(f"--worker-index/--num-workers given under a launcher with WORLD_SIZE={env['WORLD_SIZE']}: "
                           "every process would do the same shards; drop the options (ranks come from the launcher)")
        return Worker(index, count, local, "explicit", threads)
    rank, size, source = _inner(env)
    Worker(rank, size, local, source)  # validates the launcher's own numbers before combining them
    array = _array(env)
    if array is None:
        return Worker(rank, size, local, source, threads)
    pos, n = array
    return Worker(pos * size + rank, n * size, local, f"slurm-array+{source}" if size > 1 else "slurm-array",
                  threads)
