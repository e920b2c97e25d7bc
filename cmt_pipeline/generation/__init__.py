"""Trajectory generation: the sharded, deterministic, resumable work loop and worker identity."""

from .run import draw_priors, generate, make_plan
from .worker import Worker, worker_from_env

__all__ = ["generate", "draw_priors", "make_plan", "Worker", "worker_from_env"]
