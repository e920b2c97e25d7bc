"""Samplers: the generator seam. A sampler maps unit prior noise (+ labels) to samples, whatever is behind it:

    sampler(prior, labels=None, renoise=None) -> x0        prior: (B, C, H, W) unit noise; x_T = sigma_max * prior
    sampler.shape, .num_classes, .nfe, .renoise_steps, .describe()

`TeacherSampler` is a denoiser + ODE solver + sigma grid (the teacher, or a reference solve). `StudentSampler`
is a flow-map student: any denoiser-seam module whose single evaluation f(x, sigma) jumps to the trajectory's
end (e.g. an EDMDenoiser with boundary_sigma > 0), sampled at 1 step, f(x_T, sigma_max), or more by re-noising:
x_mid = x0_hat + sigma_mid * eps', then f(x_mid, sigma_mid). Re-noising needs `renoise_steps` extra unit
noises per sample; they are drawn per sample index like the prior, so samples never depend on the batch size.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from .constants import GRID, SIGMA_MAX, SIGMA_MID, SIGMA_MIN, SOLVER, STEPS
from .priors import check_class_labels, draw_priors, draw_renoise
from .solvers import NFE_PER_STEP, get_solver, make_grid
from .models import as_denoiser
from .models.io import open_network
from .teachers import Denoiser
from .memory import check_memory
from .devices import AUTOCAST, full_fp32
from .threads import one_thread_per_call


class TeacherSampler:
    def __init__(self, denoiser: Denoiser, solver: str = SOLVER, steps: int = STEPS, grid: str = GRID,
                 sigma_max: float = SIGMA_MAX, sigma_min: float = SIGMA_MIN):
        self.net, self.solver_name = denoiser, solver
        self.solve = get_solver(solver)
        self.sigmas = make_grid(grid, steps, sigma_max, sigma_min)
        self.grid, self.steps = grid, steps
        self.shape, self.num_classes = tuple(denoiser.shape), denoiser.num_classes
        self.nfe, self.renoise_steps = NFE_PER_STEP[solver] * steps, 0
        self.sigma_max = float(self.sigmas[0])

    def __call__(self, prior, labels=None, renoise=None):
        return self.solve(self.net, prior * self.sigma_max, self.sigmas, labels)

    def describe(self) -> dict:
        return {"kind": "teacher", "solver": self.solver_name, "steps": self.steps, "grid": self.grid, "nfe": self.nfe,
                "sigmas": [self.sigma_max, float(self.sigmas[-1])], "denoiser": self.net.describe()}


class StudentSampler:
    def __init__(self, student: Denoiser, sigmas=(SIGMA_MAX,)):
        self.net, self.sigmas = student, [float(s) for s in sigmas]
        self.shape, self.num_classes = tuple(student.shape), student.num_classes
        self.nfe, self.renoise_steps = len(self.sigmas), len(self.sigmas) - 1
        self.sigma_max = self.sigmas[0]

    @torch.no_grad()
    def __call__(self, prior, labels=None, renoise=None):
        x = self.net(prior * self.sigma_max, self.sigma_max, labels)
        for k, s in enumerate(self.sigmas[1:]):
            x = self.net(x + s * renoise[:, k], s, labels)
        return x

    def describe(self) -> dict:
        return {"kind": "student", "steps": len(self.sigmas), "nfe": self.nfe, "sigmas": self.sigmas,
                "denoiser": self.net.describe()}


def student_sigmas(steps: int, sigma_max: float = SIGMA_MAX, sigma_mid: float = SIGMA_MID) -> list[float]:
    """The paper's few-step schedule: [sigma_max] for 1 step, [sigma_max, sigma_mid] for 2."""
    if steps not in (1, 2):
        raise ValueError(f"a student samples in 1 or 2 steps, got {steps}")
    return [sigma_max] if steps == 1 else [sigma_max, sigma_mid]


def student_grid(prior: torch.Tensor, labels: torch.Tensor | None, sigma_max: float, vae=None):
    """sample_fn(model) for a trainer's sample grids: the student's 1-step samples from fixed unit noise (and
    labels), decoded by `vae` (a LatentCodec) for a latent student."""

    def sample_fn(model):
        dev = next(model.parameters()).device
        x = StudentSampler(as_denoiser(model).eval(), [sigma_max])(
            prior.to(dev), labels.to(dev) if labels is not None else None)
        return x if vae is None else vae.to(dev).decode(x)

    return sample_fn


def load_student(spec: str, device="cpu") -> Denoiser:
    """A student through the denoiser seam, as its one-step map: whatever open_network opens, so a model.ckpt of
    any kind (a post-/mid-trained consistency or MeanFlow student), a folder written by `cmt export`, a folder in the
    project's EDM format (a consistency student has boundary_sigma > 0 in its cmt_precond.json), or any teacher
    spec, which evaluates a diffusion denoiser used as a one-jump map, the baseline a student must beat."""
    return as_denoiser(open_network(spec, device).module).eval()


def run_sampler(sampler, prior, labels=None, renoise=None, batch_size: int = 256, device="cpu",
                dtype=torch.float32, progress: bool = False, desc: str = "sample",
                precision: str = "no") -> torch.Tensor:
    """Apply `sampler` to (n, C, H, W) numpy prior noise in batches; returns CPU samples in `dtype`. On a CPU the
    batches run torch's thread count at a time, each on one intra-op thread, as generation's do (threads.py): a
    sample's bytes then do not depend on the thread count, and a small network runs faster (docs/performance.md).
    precision "bf16" runs the network's convolutions and matmuls under bf16 autocast (1.6-1.8x the samples per
    second on a CPU with bf16 hardware); the solver's and the re-noising's arithmetic stays in `dtype`."""
    device = torch.device(device)

    def one(b: int) -> torch.Tensor:
        x = torch.from_numpy(prior[b:b + batch_size]).to(device, dtype)
        lab = torch.from_numpy(labels[b:b + batch_size]).to(device) if sampler.num_classes else None
        ren = torch.from_numpy(renoise[b:b + batch_size]).to(device, dtype) if renoise is not None else None
        # grad mode and autocast are per thread
        with torch.no_grad(), torch.autocast(device.type, AUTOCAST[precision], enabled=precision != "no"):
            return sampler(x, lab, ren).to(dtype).cpu()

    starts = range(0, len(prior), batch_size)
    bar = dict(total=len(starts), desc=desc, disable=not progress, unit="batch")
    if device.type != "cpu":
        return torch.cat(list(tqdm(map(one, starts), **bar)))
    with one_thread_per_call(torch.get_num_threads()) as run:
        return torch.cat(list(tqdm(run(one, starts), **bar)))


@full_fp32()
def sample(sampler, num_samples: int, seed: int = 0, batch_size: int = 256, device="cpu",
           class_labels: str = "random", progress: bool = False, precision: str = "no"):
    """Samples 0..n-1 of a seeded run: (samples, prior, labels, renoise); sample i depends only on (seed, i) (and
    `precision`: run_sampler's)."""
    check_class_labels(class_labels, sampler.num_classes)
    check_memory("--num-samples", num_samples, (2 + sampler.renoise_steps) * 4 * math.prod(sampler.shape),
                 "its samples and noise")
    indices = np.arange(num_samples)
    prior, labels = draw_priors(seed, indices, sampler.shape, sampler.num_classes, class_labels)
    renoise = draw_renoise(seed, indices, sampler.shape, sampler.renoise_steps) if sampler.renoise_steps else None
    x = run_sampler(sampler, prior, labels, renoise, batch_size, device, progress=progress, precision=precision)
    return x, prior, labels, renoise
