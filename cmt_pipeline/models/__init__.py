"""Student parametrisations. A consistency student is an EDMDenoiser whose boundary_sigma > 0 makes
f(x, s) = x exact (teachers/edm.py); a MeanFlow student adds a second time input (meanflow.py)."""

from .meanflow import MeanFlowDenoiser, MeanFlowStudent, as_denoiser, consistency_student

__all__ = ["MeanFlowStudent", "MeanFlowDenoiser", "as_denoiser", "consistency_student"]
