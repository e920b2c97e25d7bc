"""Student parametrisations. A consistency student satisfies f(x, s) = x by construction (consistency.py);
a MeanFlow student adds a second time input (meanflow.py). Both start from any trainable denoiser."""

from .consistency import BoundaryDenoiser, consistency_student
from .meanflow import MeanFlowDenoiser, MeanFlowStudent, as_denoiser

__all__ = ["BoundaryDenoiser", "MeanFlowStudent", "MeanFlowDenoiser", "as_denoiser", "consistency_student"]
