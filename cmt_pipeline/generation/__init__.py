"""Trajectory generation: the sharded, deterministic, resumable work loop and worker identity."""

from .run import generate, make_plan
from .worker import Worker, worker_from_env

__all__ = ["generate", "make_plan", "Worker", "worker_from_env"]
