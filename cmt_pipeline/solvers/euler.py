"""Euler on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma. NFE = steps; global order 1."""

from .states import ode_solver


@ode_solver
def euler(denoiser, x, sigmas, class_labels=None):
    for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        x = x + (s_next - s) * (x - denoiser(x, s, class_labels)) / s
        yield x
