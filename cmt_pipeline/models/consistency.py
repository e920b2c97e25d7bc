"""Consistency students: f(x, sigma) with f(x, s) = x exactly at the boundary s = sigma_min_shift.

A teacher in the project's EDM format becomes one by setting its preconditioning's boundary_sigma (teachers/
edm.py); any other denoiser is wrapped in teachers/boundary.py's BoundaryDenoiser, the same boundary-shifted EDM
coefficients written in terms of the denoiser, so both kinds start as the teacher's own function.
"""

from __future__ import annotations

import copy

from ..constants import SIGMA_MIN_SHIFT
from ..teachers.base import Denoiser
from ..teachers.boundary import BoundaryDenoiser
from ..teachers.edm import EDMDenoiser

__all__ = ["BoundaryDenoiser", "consistency_student"]


def consistency_student(teacher: Denoiser, sigma_min_shift: float = SIGMA_MIN_SHIFT) -> Denoiser:
    """A trainable copy of `teacher` that satisfies the boundary condition f(x, sigma_min_shift) = x."""
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    if isinstance(student, EDMDenoiser):
        student.precond.boundary_sigma = sigma_min_shift
        return student
    return BoundaryDenoiser(student, sigma_min_shift)
