"""The boundary condition of a consistency student, f(x, s) = x exactly at s = sigma_min_shift, around any denoiser.

A teacher in the project's EDM format gets it from its own preconditioning (boundary_sigma, teachers/edm.py). Any
other denoiser D (a user's diffusers UNet or DiT, VP or flow-matching, a native published network) is wrapped in
the same boundary-shifted EDM coefficients, written in terms of D instead of the raw network F:

    f(x, sigma) = c_skip_s(sigma) x + ((sigma - s) / sigma) (D(x, sigma) - c_skip_0(sigma) x)
    c_skip_s = sd^2 / ((sigma - s)^2 + sd^2)

For an EDM network this is exactly its boundary-shifted form (c_out_s / c_out_0 = (sigma - s) / sigma), so both
kinds of teacher start as the same function: the teacher's denoiser, changed only near s. As in EDMDenoiser,
the shift applies in eval mode only (s = 0 in training, as the reference does). It lives beside the teachers
because an exported native student (teachers/exported.py) is read back as one.
"""

from __future__ import annotations

from ..constants import SIGMA_DATA
from .base import Denoiser, sigma_column
from .edm import Precond


class BoundaryDenoiser(Denoiser):
    def __init__(self, net: Denoiser, boundary_sigma: float, sigma_data: float = SIGMA_DATA):
        super().__init__()
        self.net, self.shape, self.num_classes = net, net.shape, net.num_classes
        self.precond = Precond(sigma_data=sigma_data, boundary_sigma=boundary_sigma, num_classes=net.num_classes)

    def forward(self, x, sigma, class_labels=None):
        sig = sigma_column(sigma, x).float()
        sd, s = self.precond.sigma_data, 0.0 if self.training else self.precond.boundary_sigma
        xf = x.float()
        d = self.net(x, sigma, class_labels).float()
        c_skip_s = sd**2 / ((sig - s) ** 2 + sd**2)
        c_skip_0 = sd**2 / (sig**2 + sd**2)
        return (c_skip_s * xf + (sig - s) / sig * (d - c_skip_0 * xf)).to(x.dtype)

    def describe(self) -> dict:
        return {**self.net.describe(), "boundary_sigma": self.precond.boundary_sigma}
