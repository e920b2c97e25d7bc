"""Teachers behind the denoiser seam: exact VP -> EDM mapping, EDM format round trip, closed-form GMM."""

import pytest
import torch

from cmt_pipeline.teachers import EDMDenoiser, Precond, build_unet, load_teacher
from cmt_pipeline.teachers.gmm import GMMDenoiser, gmm8x8
from cmt_pipeline.errors import CMTError


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("num_classes", [0, 3])
def test_diffusers_vp_teacher_matches_scheduler_x0(vp_teacher_dir, prediction_type, num_classes):
    """At the scheduler's own timesteps, D(x_ve, sigma_t) equals diffusers' pred_original_sample."""
    from diffusers import DDPMScheduler, UNet2DModel

    path = vp_teacher_dir(prediction_type, num_classes)
    teacher = load_teacher(str(path))
    assert teacher.shape == (1, 8, 8) and teacher.num_classes == num_classes
    unet = UNet2DModel.from_pretrained(path / "unet")
    sched = DDPMScheduler.from_pretrained(path / "scheduler")
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(num_classes, (4,), generator=g) if num_classes else None
    for t in (10, 250, 700, 999):
        a = sched.alphas_cumprod[t]
        sigma = ((1 - a) / a).sqrt()
        x_vp = torch.randn(4, 1, 8, 8, generator=g)
        out = unet(x_vp, t, class_labels=labels).sample
        expected = sched.step(out, t, x_vp).pred_original_sample
        got = teacher(x_vp * (1 + sigma**2).sqrt(), sigma, labels)
        assert torch.allclose(got, expected, atol=2e-5 * max(1.0, sigma.item())), (t, (got - expected).abs().max())


def test_conditional_teacher_requires_labels(vp_teacher_dir):
    teacher = load_teacher(str(vp_teacher_dir("epsilon", 3)))
    with pytest.raises(ValueError, match="class-conditional"):
        teacher(torch.zeros(2, 1, 8, 8), 1.0)


def test_edm_format_round_trip_and_boundary(tmp_path):
    torch.manual_seed(0)
    net = EDMDenoiser(build_unet((1, 8, 8), channels=(8, 16), layers_per_block=1), Precond())
    net.save(tmp_path / "t")
    loaded = load_teacher(str(tmp_path / "t"))
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(net.eval()(x, 2.0), loaded(x, 2.0))
    assert loaded.fingerprint() == net.fingerprint()
    student = EDMDenoiser.load(tmp_path / "t", boundary_sigma=0.003).eval()
    assert torch.allclose(student(x, 0.003), x, atol=1e-6)  # f(x, s_min) = x, at evaluation
    assert not torch.allclose(student(x, 1.0), x, atol=1e-3)


def test_gmm_single_component_is_closed_form():
    mu, s = torch.tensor([[0.5, -1.0]]), 0.3
    d = GMMDenoiser(mu, torch.tensor([s]), torch.ones(1), (2, 1, 1))
    x = torch.randn(5, 2, 1, 1, dtype=torch.float64)
    sigma = 0.7
    expected = mu.double().reshape(1, 2, 1, 1) + s**2 / (s**2 + sigma**2) * (x - mu.double().reshape(1, 2, 1, 1))
    assert torch.allclose(d(x, sigma), expected)


def test_gmm_denoiser_is_posterior_mean_by_monte_carlo():
    """Average of x0 over samples whose noisy version lands near x approximates D(x): check via Tweedie's
    identity instead: D(x, sigma) = x + sigma^2 * grad log p_sigma(x), with p_sigma from the same mixture."""
    d = gmm8x8()
    sigma = 0.5
    x = (d.sample(4, torch.Generator().manual_seed(0)) + sigma * torch.randn(4, 1, 8, 8, dtype=torch.float64))
    x.requires_grad_(True)
    flat = x.reshape(4, -1)
    var = d.stds**2 + sigma**2
    sq = ((flat[:, None, :] - d.means[None]) ** 2).sum(-1)
    logp = torch.logsumexp(d.weights.log() - 0.5 * sq / var - 0.5 * 64 * var.log(), dim=1).sum()
    (grad,) = torch.autograd.grad(logp, x)
    assert torch.allclose(d(x.detach(), sigma), x.detach() + sigma**2 * grad, atol=1e-10)


def test_bad_teacher_specs(tmp_path):
    with pytest.raises(CMTError, match="does not exist"):
        load_teacher(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CMTError, match="not a teacher folder"):
        load_teacher(str(tmp_path / "empty"))
    with pytest.raises(CMTError, match="gmm:gmm2d"):
        load_teacher("gmm:nope")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cmt_precond.json").write_text("{}")
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CMTError, match="could not load"):
        load_teacher(str(broken))


@pytest.mark.slow
def test_a_teacher_config_of_a_million_pixel_side_is_refused_before_the_model_is_built(vp_teacher_dir, tmp_path):
    """`sample_size: 1000000` in a teacher folder's config.json: one line naming the field, under a memory limit,
    before any model or batch is allocated (the smoke test's (1, 1, 1e6, 1e6) batch was a traceback)."""
    import json
    import resource
    import shutil
    import subprocess
    import sys

    teacher = tmp_path / "teacher"
    shutil.copytree(vp_teacher_dir(), teacher)
    config = teacher / "unet" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "sample_size": 1000000}))
    with pytest.raises(CMTError, match=r"sample_size 1000000 is not a side .* in 1\.\.4096"):
        load_teacher(str(teacher))

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    r = subprocess.run([sys.executable, "-m", "cli", "generate-trajectories", "--teacher", str(teacher),
                        "--num-samples", "4", "--device", "cpu", "--quiet", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, preexec_fn=limit)
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "sample_size 1000000" in lines[0], r.stdout + r.stderr
    assert not (tmp_path / "out").exists()
