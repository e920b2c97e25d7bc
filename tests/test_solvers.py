"""Solver correctness against closed-form ground truth (Gaussian and Gaussian-mixture teachers, float64)."""

import math

import pytest
import torch

from cmt_pipeline.solvers import SOLVERS, karras_grid, logsnr_grid, make_grid
from cmt_pipeline.teachers.gmm import GMMDenoiser, gmm2d


def test_grids_endpoints_and_shape():
    g = logsnr_grid(16)
    assert len(g) == 17 and g[0] == 80.0 and math.isclose(g[-1].item(), 0.002, rel_tol=1e-12)
    ratios = g[1:] / g[:-1]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios))  # geometric = uniform in log-SNR
    k = karras_grid(18)
    assert math.isclose(k[0].item(), 80.0) and math.isclose(k[-1].item(), 0.002, rel_tol=1e-9)
    assert (k[1:] < k[:-1]).all()
    with pytest.raises(ValueError):
        make_grid("cosine", 16)


def single_gaussian():
    return GMMDenoiser(torch.tensor([[0.3, -0.2]]), torch.tensor([0.5]), torch.ones(1), (2, 1, 1))


def exact_gaussian_flow(x, sigma_from, sigma_to, mu, s):
    """For x0 ~ N(mu, s^2 I) the probability-flow ODE scales x - mu by sqrt((s^2 + sigma^2)) exactly."""
    return mu + (x - mu) * math.sqrt(s**2 + sigma_to**2) / math.sqrt(s**2 + sigma_from**2)


# Max error after 256 steps, about 2x what each method reaches: first order is visibly coarser.
@pytest.mark.parametrize("name,tol", [("euler", 3e-2), ("heun", 7e-4), ("dpm2", 4e-4), ("dpm3", 1.5e-4)])
def test_solvers_follow_the_exact_gaussian_flow(name, tol):
    d = single_gaussian()
    x = 80 * torch.randn(64, 2, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigmas = logsnr_grid(256)
    states = SOLVERS[name](d, x, sigmas, return_intermediates=True)
    assert states.shape == (257, 64, 2, 1, 1) and torch.equal(states[0], x)
    assert torch.equal(SOLVERS[name](d, x, sigmas), states[-1])  # by default the final state alone, the same bytes
    mu = d.means[0].reshape(1, 2, 1, 1)
    exact = exact_gaussian_flow(x, 80.0, 0.002, mu, 0.5)
    assert (states[-1] - exact).abs().max() < tol


def rates(name, teacher, x, ref, steps=(16, 32, 64, 128, 256)):
    errs = [(SOLVERS[name](teacher, x, logsnr_grid(n)) - ref).pow(2).mean().sqrt().item() for n in steps]
    return errs, [math.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1)]


@pytest.fixture(scope="module")
def gmm_problem():
    teacher = gmm2d()
    x = 80 * torch.randn(256, 2, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = SOLVERS["dpm3"](teacher, x, logsnr_grid(4096))
    return teacher, x, ref


# Expected global order: Euler 1, Heun 2, DPM-Solver++ 2M 2, 3M 2 (its first-order warm-up and final
# steps bound the global order). Measured as log2 of the error ratio per halving of the step, 32 -> 256.
@pytest.mark.parametrize("name,order", [("euler", 1), ("heun", 2), ("dpm2", 2), ("dpm3", 2)])
def test_convergence_order_on_gaussian_mixture(gmm_problem, name, order):
    errs, r = rates(name, *gmm_problem)
    observed = sum(r[1:]) / len(r[1:])
    assert abs(observed - order) < 0.35, f"{name}: errors {errs}, per-halving log2 ratios {r}"


def test_dpm3_beats_dpm2_at_16_steps(gmm_problem):
    teacher, x, ref = gmm_problem
    err = {n: (SOLVERS[n](teacher, x, logsnr_grid(16)) - ref).pow(2).mean().sqrt().item() for n in ("dpm2", "dpm3")}
    assert err["dpm3"] < 0.75 * err["dpm2"], err


def difference_form(denoiser, x, sig, order, lower_order_final):
    """DPM-Solver++ as Lu et al. write it (differences of the denoiser's outputs), the form dpmpp's coefficients
    are worked out from: an independent statement of the step."""
    lam = [-math.log(s) for s in sig]
    n, hist, states = len(sig) - 1, [], [x]
    for i in range(n):
        hist = (hist + [denoiser(x, sig[i])])[-3:]
        k = min(order, i + 1, n - i) if lower_order_final else min(order, i + 1)
        h, r = lam[i + 1] - lam[i], sig[i + 1] / sig[i]
        x_next = r * x + (1 - r) * hist[-1]
        if k >= 2:
            r0 = (lam[i] - lam[i - 1]) / h
            d1_0 = (hist[-1] - hist[-2]) / r0
            if k == 2:
                x_next = x_next + 0.5 * (1 - r) * d1_0
            else:
                r1 = (lam[i - 1] - lam[i - 2]) / h
                d1_1 = (hist[-2] - hist[-3]) / r1
                d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x_next = x_next + ((r - 1) / h + 1) * d1 - ((r - 1 + h) / h**2 - 0.5) * d2
        x = x_next
        states.append(x)
    return torch.stack(states)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("grid", ["logsnr", "karras"])
def test_dpmpp_takes_the_steps_of_lu_et_al(gmm_problem, order, lower_order_final, grid):
    """The one-multiply-and-fused-adds step is the difference form, state by state, to float64 round-off."""
    teacher, x, _ = gmm_problem
    sigmas = make_grid(grid, 12)
    ours = SOLVERS["dpm3"].func(teacher, x, sigmas, order=order, lower_order_final=lower_order_final,
                                return_intermediates=True)
    ref = difference_form(teacher, x, sigmas.tolist(), order, lower_order_final)
    assert (ours - ref).abs().max() < 1e-9 * ref.abs().max()


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_into_receives_each_state_as_the_stacked_solve_has_it(name):
    d = single_gaussian().float()
    x = 80 * torch.randn(8, 2, 1, 1, generator=torch.Generator().manual_seed(1))
    sigmas = logsnr_grid(6)
    states = SOLVERS[name](d, x, sigmas, return_intermediates=True)
    buf = torch.full((8, 7, 2, 1, 1), math.nan)  # sample-major, as the generator's batch slots are
    final = SOLVERS[name](d, x, sigmas, into=buf.unbind(1))
    assert torch.equal(buf, states.transpose(0, 1)) and torch.equal(final, states[-1])
    with pytest.raises(ValueError, match="into holds 6 tensors for the 7 states"):
        SOLVERS[name](d, x, sigmas, into=buf.unbind(1)[:6])
