"""The one Accelerate training loop (loop.py) with its EMA, data seam and checkpoints, and the stages built on it."""

from .checkpoint import export_denoiser, load_model, model_from_checkpoint, save_model
from .data import TensorSource
from .ema import EMA, ema_decay
from .loop import LoopState, SampleGrid, train

__all__ = ["train", "LoopState", "SampleGrid", "TensorSource", "EMA", "ema_decay", "save_model", "load_model",
           "model_from_checkpoint", "export_denoiser"]
