"""Euler on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma. NFE = steps; global order 1."""

import torch


@torch.no_grad()
def euler(denoiser, x, sigmas, class_labels=None):
    states = [x]
    for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        x = x + (s_next - s) * (x - denoiser(x, s, class_labels)) / s
        states.append(x)
    return torch.stack(states)
