"""Metrics that need no feature network: paired teacher-matching error on a store, Gaussian-mixture ground truth,
and the distance of 8x8 samples to the training digits (memorisation).

- Paired error: on the store's last N trajectories (mid-training's held-out tail), the generator is run from each
  stored prior (x_T = sigma_max * prior, stored label) and compared with the stored solver sample x0: what
  mid-training regresses onto, so it isolates "does it match the teacher" from "is the teacher good".
  PSNR uses the [-1, 1] data range (peak-to-peak 2).
- Memorisation: digits FD is measured against the teacher's own training set, so copies of training digits would
  score well. The pixel-space L2 distance of each sample to its nearest training digit, against the same distance
  of a real digit to its nearest other digit, says whether a generator copies: its median, and the share of
  samples closer than the 1st percentile of the real-to-real distances (about 1% for a generator that does not copy).
- Mixture ground truth: the exact flow map is a float64 DPM-Solver++(3) solve with `reference_steps` steps on the
  log-SNR grid (solver error far below any generator's; tests check 1024 vs 2048 steps agree). The distance to
  the true mixture is the sliced Wasserstein-2 distance to exact mixture samples: it compares whole 1-D marginals
  along random directions, so it sees mode dropping and blurring between modes, which a pixel-space Frechet
  distance (means and covariances only) cannot; in 2-D (gmm2d) it is close to the true W2.
"""

from __future__ import annotations

import functools
import hashlib
import math

import numpy as np
import torch

from ..constants import GRID, SIGMA_MAX, SIGMA_MIN, SOLVER
from ..sampling import TeacherSampler, draw_renoise, run_sampler
from ..stores import read_tail
from ..errors import CMTError
from .features import real_digits


# the quality a generator is ranked by: the first of these it has (the report's ratio columns, post-training's
# --keep-best)
HEADLINE = ("digits_fd", "fid", "sliced_w2")


def mse_psnr(x, target) -> dict:
    mse = float(((torch.as_tensor(x).double() - torch.as_tensor(target).double()) ** 2).mean())
    return {"mse": mse, "psnr": 10 * math.log10(4.0 / mse) if mse > 0 else math.inf}


def check_store(plan: dict, sampler, store) -> None:
    """Refuse a store the generator cannot be compared with, before any sampling is spent."""
    if tuple(plan["shape"]) != sampler.shape:
        raise CMTError(f"--store {store} holds samples of shape {tuple(plan['shape'])}, the generator makes "
                       f"{sampler.shape}; pass a store made by this generator's teacher")
    if plan["num_classes"] != sampler.num_classes:
        raise CMTError(f"--store {store} has {plan['num_classes']} classes, the generator {sampler.num_classes}; "
                       "pass a store made by this generator's teacher")
    if not math.isclose(plan["sigmas"][0], sampler.sigma_max, rel_tol=1e-6):
        raise CMTError(f"--store {store} starts at sigma_max {plan['sigmas'][0]}, the generator at "
                       f"{sampler.sigma_max}; pass --sigma-max {plan['sigmas'][0]}")


def paired_samples(sampler, data: dict, batch_size: int = 256, device="cpu", seed: int = 0,
                   progress: bool = False, precision: str = "no") -> tuple[torch.Tensor, dict]:
    """The generator's outputs from read_tail's stored priors and labels, with their mse_psnr against the stored
    x0: the one paired-error computation, for `cmt evaluate` and for mid-training's held-out curve (which reads
    the tail once and re-measures it every eval_every steps)."""
    renoise = draw_renoise(seed, data["index"], sampler.shape, sampler.renoise_steps) if sampler.renoise_steps else None
    x = run_sampler(sampler, data["prior"], data["labels"], renoise, batch_size, device, progress=progress,
                    desc="paired", precision=precision)
    return x, mse_psnr(x, data["x0"].astype(np.float32))


def paired_error(sampler, store, num: int = 256, batch_size: int = 256, device="cpu", seed: int = 0,
                 progress: bool = False, precision: str = "no") -> dict:
    """MSE / PSNR of the generator's output from the stored priors against the stored solver samples."""
    data = read_tail(store, num)
    plan = data["plan"]
    check_store(plan, sampler, store)
    x, err = paired_samples(sampler, data, batch_size, device, seed, progress, precision)
    return {"paired_mse": err["mse"], "paired_psnr": err["psnr"], "paired_samples": len(x),
            "paired_store_solver": f"{plan['solver']} x {plan['num_states']} steps"}


def nearest_distances(x: torch.Tensor, real: torch.Tensor, exclude_self: bool = False,
                      chunk: int = 1024) -> torch.Tensor:
    """Each row of x's L2 distance to its nearest row of `real` (to its nearest other row when x is real itself)."""
    out = []
    for b in range(0, len(x), chunk):
        d = torch.cdist(x[b:b + chunk], real)
        if exclude_self:
            d[torch.arange(len(d)), torch.arange(b, b + len(d))] = math.inf
        out.append(d.min(1).values)
    return torch.cat(out)


@functools.cache
def training_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1797 digits the built-in teacher trained on, flattened, in its [-1, 1] scale, and each one's distance
    to its nearest other digit (computed once)."""
    real = torch.from_numpy(real_digits()[0]).double().reshape(-1, 64)
    return real, nearest_distances(real, real, exclude_self=True)


def memorisation(images) -> dict:
    """Median L2 distance of 8x8 samples to their nearest training digit, the share closer than the 1st percentile
    of the real-to-real nearest-other distances, and those two real figures, for scale."""
    real, real_nn = training_digits()
    p1 = float(torch.quantile(real_nn, 0.01))
    d = nearest_distances(torch.as_tensor(images).double().reshape(len(images), -1).cpu(), real)
    return {"nearest_digit_median": float(d.median()), "nearest_digit_close_share": float((d < p1).double().mean()),
            "nearest_digit_real_median": float(real_nn.median()), "nearest_digit_real_p1": p1}


def exact_flow_map(gmm, prior, sigma_max: float = SIGMA_MAX, sigma_min: float = SIGMA_MIN, steps: int = 1024,
                   batch_size: int = 256, device="cpu", progress: bool = False) -> torch.Tensor:
    """The mixture's flow map from x_T = sigma_max * prior to sigma_min, by a float64 high-order solve."""
    ref = TeacherSampler(gmm.to(device), SOLVER, steps, GRID, sigma_max, sigma_min)
    return run_sampler(ref, prior, None, None, batch_size, device, torch.float64, progress, desc="exact flow map")


def sliced_wasserstein(a, b, projections: int = 256, seed: int = 0) -> float:
    """Sliced W2 between two equal-size sample sets: sqrt of the mean over random unit directions of the
    squared W2 between the projected 1-D samples (sorted, paired)."""
    a = torch.as_tensor(a).double().reshape(len(a), -1).cpu()
    b = torch.as_tensor(b).double().reshape(len(b), -1).cpu()
    if len(a) != len(b):
        raise ValueError(f"sliced Wasserstein needs equal sample counts, got {len(a)} and {len(b)}")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, generator=g, dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    pa, pb = (a @ dirs).sort(0).values, (b @ dirs).sort(0).values
    return float(((pa - pb) ** 2).mean().sqrt())


_EXACT: dict = {}  # the last exact flow map solved: (digest of the priors and the mixture, grid) -> map


def gmm_metrics(gmm, samples, prior, deterministic: bool, sigma_max: float = SIGMA_MAX, sigma_min: float = SIGMA_MIN,
                reference_steps: int = 1024, seed: int = 0, batch_size: int = 256, device="cpu",
                progress: bool = False) -> dict:
    """Error against the exact flow map (deterministic generators only: a re-noising sampler is not a function
    of x_T) and sliced W2 to exact mixture samples, with the floor: sliced W2 between two exact sample sets."""
    out = {}
    if deterministic:
        digest = hashlib.sha256(np.ascontiguousarray(prior).tobytes())
        for t in gmm.state_dict().values():
            digest.update(t.detach().cpu().double().numpy().tobytes())
        key = (digest.hexdigest(), sigma_max, sigma_min, reference_steps)
        if key not in _EXACT:  # trainers re-measure the same priors every eval_every steps: solve them once
            _EXACT.clear()
            _EXACT[key] = exact_flow_map(gmm, prior, sigma_max, sigma_min, reference_steps, batch_size, device,
                                         progress)
        exact = _EXACT[key]
        err = mse_psnr(samples, exact)
        out.update(flow_map_mse=err["mse"], flow_map_psnr=err["psnr"], flow_map_reference=f"dpm3 x {reference_steps} float64")
    g = torch.Generator().manual_seed(seed)
    n = len(samples)
    exact_a, exact_b = gmm.sample(n, g), gmm.sample(n, g)
    out.update(sliced_w2=sliced_wasserstein(samples, exact_a), sliced_w2_floor=sliced_wasserstein(exact_b, exact_a))
    return out
