"""EDM's deterministic Heun (2nd-order trapezoid). NFE = 2 * steps (the grid ends at sigma_min > 0)."""

from .states import ode_solver


@ode_solver
def heun(denoiser, x, sigmas, class_labels=None):
    for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        d = (x - denoiser(x, s, class_labels)) / s
        x_euler = x + (s_next - s) * d
        d_next = (x_euler - denoiser(x_euler, s_next, class_labels)) / s_next
        x = x + (s_next - s) * 0.5 * (d + d_next)
        yield x
