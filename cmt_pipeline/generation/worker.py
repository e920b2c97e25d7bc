"""Who am I among the generation workers? Read from the launcher that started us; no collectives needed.

Order: explicit --worker-index/--num-workers, torchrun/accelerate (RANK, WORLD_SIZE, LOCAL_RANK),
Slurm array jobs (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_COUNT),
Slurm tasks (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), else a single worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..utils import CMTError


@dataclass(frozen=True)
class Worker:
    index: int = 0
    count: int = 1
    local_rank: int = 0
    source: str = "single"

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise CMTError(f"worker index {self.index} is outside 0..{self.count - 1}; "
                           "pass --worker-index in [0, --num-workers)")

    def owns(self, shard: int) -> bool:
        return shard % self.count == self.index


def worker_from_env(index: int | None = None, count: int | None = None, env=None) -> Worker:
    env = os.environ if env is None else env
    if (index is None) != (count is None):
        raise CMTError("--worker-index and --num-workers go together; pass both or neither")
    if index is not None:
        return Worker(index, count, int(env.get("LOCAL_RANK", 0)), "explicit")
    if "WORLD_SIZE" in env and "RANK" in env:
        return Worker(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), "torchrun")
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        idx = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        return Worker(idx, int(env["SLURM_ARRAY_TASK_COUNT"]), 0, "slurm-array")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return Worker(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)), "slurm")
    return Worker()
