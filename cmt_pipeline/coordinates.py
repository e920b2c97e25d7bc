"""EDM (variance-exploding) <-> flow-matching coordinates, stated once.

An EDM state x = x0 + sigma * eps, rescaled by 1 / (1 + sigma), is the flow-matching state
z = (1 - t) x0 + t eps at time t = sigma / (1 + sigma); back, sigma = t / (1 - t) and x = z * (1 + sigma).
Teachers, students and objectives that work in flow-matching time convert through these functions.
(few_step_pipeline.py keeps its own copy: exported folders run it with torch and diffusers alone.)
"""

from __future__ import annotations


def fm_time(sigma):
    """t = sigma / (1 + sigma)."""
    return sigma / (1 + sigma)


def fm_state(x, sigma):
    """z = x / (1 + sigma); `sigma` broadcasts against x."""
    return x / (1 + sigma)


def edm_sigma(t):
    """sigma = t / (1 - t), the inverse of fm_time."""
    return t / (1 - t)


def edm_state(z, sigma):
    """x = z * (1 + sigma), the inverse of fm_state."""
    return z * (1 + sigma)
