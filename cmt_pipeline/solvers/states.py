"""The solvers' shared signature: a solver is written as a generator of its successive states, and `ode_solver`
turns it into `solver(denoiser, x, sigmas, class_labels=None, return_intermediates=False)`."""

import functools

import torch


def ode_solver(steps):
    """By default only the final state is kept, so a long solve (evaluation's 1024-step reference) holds one state,
    not len(sigmas); `return_intermediates` stacks every state, x first (flow_matching's ODESolver.sample)."""

    @functools.wraps(steps)
    @torch.no_grad()
    def solve(denoiser, x, sigmas, class_labels=None, return_intermediates: bool = False, **options):
        states = steps(denoiser, x, sigmas, class_labels, **options)
        if return_intermediates:
            return torch.stack([x, *states])
        for x in states:
            pass
        return x

    return solve
