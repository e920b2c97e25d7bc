"""The one Accelerate training loop (loop.py) with its EMA, data seam and resume checkpoints, and the stages built on it."""

from .data import TensorSource
from .ema import EMA, ema_decay
from .loop import LoopState, SampleGrid, train

__all__ = ["train", "LoopState", "SampleGrid", "TensorSource", "EMA", "ema_decay",]
