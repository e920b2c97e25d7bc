"""The solvers' shared signature: a solver is written as a generator of its successive states, and `ode_solver`
turns it into `solver(denoiser, x, sigmas, class_labels=None, return_intermediates=False, into=None)`."""

import functools
import inspect

import torch


def ode_solver(steps):
    """By default only the final state is kept, so a long solve (evaluation's 1024-step reference) holds one state,
    not len(sigmas); `return_intermediates` stacks every state, x first (flow_matching's ODESolver.sample).
    `into`, len(sigmas) tensors (views of the caller's buffers), receives state i in into[i] as it is made: the
    generation loop writes each state straight into its batch slot, with no stacked copy between. A solver that
    takes `into` itself makes its states there (no copy at all); for the others each state is copied."""
    fills = "into" in inspect.signature(steps).parameters

    @functools.wraps(steps)
    @torch.no_grad()
    def solve(denoiser, x, sigmas, class_labels=None, return_intermediates: bool = False, into=None, **options):
        if into is not None:
            if len(into) != len(sigmas):
                raise ValueError(f"into holds {len(into)} tensors for the {len(sigmas)} states of this grid")
            into[0].copy_(x)
            if fills:  # the solver makes each state in place
                options["into"] = into[1:]
        states = steps(denoiser, x, sigmas, class_labels, **options)
        if return_intermediates:
            return torch.stack([x, *states])
        if into is not None and not fills:
            for i, x in enumerate(states, 1):
                into[i].copy_(x)
            return x
        for x in states:
            pass
        return x

    return solve
