"""Each default objective equals the reference implementation's formula (sony/cmt training/loss.py ECMLoss and
networks.py ECMPrecond, locuslab/ect, sony/mf-rae transport.py), on small fixtures. The expected numbers are
written out here from the formulas in numpy, not computed with the code under test's helpers."""

import numpy as np
import pytest
import torch

from cmt_pipeline.config import PostTrainConfig
from cmt_pipeline.objectives.cmt import CMTMeanFlowLoss
from cmt_pipeline.objectives.ect import ECTLoss
from cmt_pipeline.teachers import EDMDenoiser, Precond, build_unet
from cmt_pipeline.training.posttrain import build_objective, validate
from conftest import loss_of


def default_objective(objective):
    student = EDMDenoiser(build_unet((1, 4, 4), channels=(8, 8), layers_per_block=1), Precond())
    return build_objective(validate(PostTrainConfig(init="builtin", objective=objective)), student)


def test_default_ect_loss_is_the_reference_norm_over_t_minus_r_with_q_4096():
    loss_fn = default_objective("ect")
    model = lambda x, s, labels=None: x / (1 + s.view(-1, 1, 1, 1))  # noqa: E731  a smooth f(x, sigma)
    x0 = torch.randn(64, 1, 4, 4)
    torch.manual_seed(7)
    loss, _ = loss_fn(model, {"image": x0}, 1)
    torch.manual_seed(7)  # replay the draws: t's normal, then eps
    n = torch.randn(64).double().numpy()
    eps = torch.randn(64, 1, 4, 4).double().numpy()
    x = x0.double().numpy()
    t = np.exp(n * 2.0 - 1.1)  # P_mean -1.1, P_std 2.0
    r = np.maximum(t * (1 - (1 + 8 / (1 + np.exp(t))) / 4096), 0)  # sigmoid(-t) = 1 / (1 + e^t); q = 4096
    col = (-1, 1, 1, 1)
    f_t = (x + t.reshape(col) * eps) / (1 + t.reshape(col))
    f_r = np.where(r.reshape(col) > 0, (x + r.reshape(col) * eps) / (1 + r.reshape(col)), x)
    d = np.sqrt(((f_t - f_r) ** 2).reshape(64, -1).sum(1) + 0.0**2) - 0.0  # c = 0: the plain L2 norm
    # float32 loses ~1e-4 relative in f_t - f_r (r/t = 1 - O(1e-3)); mean squared would be off by orders of magnitude
    assert loss.item() == pytest.approx((d / (t - r)).mean(), rel=1e-3)


def test_ect_q_curriculum_is_q_to_the_stage_plus_one():
    """Reference: ratio = 1 - 1 / q^(stage + 1); with q = 2 the gap halves every stage."""
    loss_fn = loss_of(ECTLoss, q=2.0, q_double_every=10)
    assert [loss_fn.q_at(step) for step in (1, 10, 11, 21, 31)] == [2, 2, 4, 8, 16]
    assert loss_of(ECTLoss, q=3.0, q_double_every=5).q_at(6) == 9  # not 3 * 2
    assert loss_of(ECTLoss).q == 4096 and loss_of(ECTLoss).q_at(10**6) == 4096  # fixed after CMT


def test_mf_mid_training_pairs_are_uniform_over_all_pairs():
    """sony/mf-rae draws (source, target) uniformly from all i > j pairs of the trajectory, x0 included:
    with 16 states + x0 that is 136 pairs, the endpoint and x_T each in 16 of them (11.8%)."""
    k = 16
    sigmas = torch.tensor([80 * (0.002 / 80) ** (i / k) for i in range(k + 1)], dtype=torch.float64)
    seen = []

    def record(z, r, t, labels):
        seen.append(torch.stack([r, t], 1))
        return torch.zeros_like(z)

    batch = {"traj": torch.zeros(8, k, 1, 2, 2), "x0": torch.zeros(8, 1, 2, 2), "labels": torch.full((8,), -1)}
    torch.manual_seed(0)
    loss_of(CMTMeanFlowLoss, sigmas=sigmas, pairs_per_traj=2000)(record, batch, 1)
    rt = torch.cat(seen).double().numpy()
    t_grid = (sigmas / (1 + sigmas)).numpy()
    j = np.abs(rt[:, :1] - t_grid[None].astype(np.float32)).argmin(1)  # r's point index
    i = np.abs(rt[:, 1:] - t_grid[None].astype(np.float32)).argmin(1)  # t's point index
    assert (i < j).all()
    counts = np.zeros((k + 1, k + 1))
    np.add.at(counts, (i, j), 1)
    expected = len(rt) / 136
    pairs = counts[np.triu_indices(k + 1, 1)]
    assert len(pairs) == 136 and (np.abs(pairs - expected) < 5 * np.sqrt(expected)).all()
    assert (j == k).mean() == pytest.approx(16 / 136, abs=0.01) and (i == 0).mean() == pytest.approx(16 / 136, abs=0.01)


def test_boundary_shift_applies_at_evaluation_only():
    """Reference ECMPrecond: training c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2);
    eval c_skip = sd^2 / ((sigma - s)^2 + sd^2), c_out = (sigma - s) sd / sqrt(sigma^2 + sd^2)."""
    torch.manual_seed(0)
    net = EDMDenoiser(build_unet((1, 4, 4), channels=(8, 8), layers_per_block=1), Precond(boundary_sigma=0.003))
    x, sigma = torch.randn(3, 1, 4, 4), torch.tensor([0.00388, 0.29, 80.0])
    sd, s = 0.5, 0.003
    col = sigma.view(-1, 1, 1, 1).double()
    with torch.no_grad():
        raw = net.backbone((x / (sigma**2 + sd**2).sqrt().view(-1, 1, 1, 1)),
                           sigma.log() / 4 * 1000.0).sample.double()
        train, evaluated = net.train()(x, sigma).double(), net.eval()(x, sigma).double()
    xd = x.double()
    expected_train = sd**2 / (col**2 + sd**2) * xd + col * sd / (col**2 + sd**2).sqrt() * raw
    expected_eval = sd**2 / ((col - s) ** 2 + sd**2) * xd + (col - s) * sd / (col**2 + sd**2).sqrt() * raw
    assert torch.allclose(train, expected_train, atol=1e-5) and torch.allclose(evaluated, expected_eval, atol=1e-5)
    assert torch.allclose(net.eval()(x, torch.full((3,), s)), x, atol=1e-6)  # the boundary condition, at evaluation


def test_objectives_have_no_defaults_of_their_own():
    """Each objective setting is declared once, on its config field, and read from there by name (issue 32): an
    objective field with its own default, or one its config lacks, would let the two drift apart."""
    import dataclasses

    from cmt_pipeline.config import MidTrainConfig, PostTrainConfig, PretrainConfig
    from cmt_pipeline.objectives import EDMLoss, from_config
    from cmt_pipeline.objectives.cmt import CMTLoss
    from cmt_pipeline.objectives.meanflow import MeanFlowLoss

    given = {"sigmas", "lpips", "sigma_data", "sigma_min"}  # what a config cannot know, and a constant
    for cls, config in ((ECTLoss, PostTrainConfig), (MeanFlowLoss, PostTrainConfig), (CMTLoss, MidTrainConfig),
                        (CMTMeanFlowLoss, MidTrainConfig), (EDMLoss, PretrainConfig)):
        own = {f.name for f in dataclasses.fields(cls)} - given
        assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(cls) if f.name in own), cls
        assert own <= {f.name for f in dataclasses.fields(config)}, (cls, own)
    cfg = validate(PostTrainConfig(init="builtin", q=7.0, huber_c=0.25))
    built = from_config(ECTLoss, cfg, sigma_data=0.5)
    assert (built.q, built.huber_c, built.p_mean) == (7.0, 0.25, -1.1)
