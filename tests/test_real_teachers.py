"""Real-scale teacher kinds, tiny and offline: a DiT backbone, a flow-matching model, classifier-free guidance,
and students made from them (mid-training reads their stores; checkpoints rebuild them)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from cmt_pipeline.models import MeanFlowStudent, consistency_student
from cmt_pipeline.objectives.meanflow import meanflow_target
from cmt_pipeline.solvers import get_solver, make_grid
from cmt_pipeline.stores import read_all
from cmt_pipeline.teachers import DiffusersDenoiser, load_teacher
from cmt_pipeline.models.io import build_network, network_spec
from cmt_pipeline.errors import CMTError

NUM_CLASSES = 5


@pytest.fixture(scope="module")
def dit_dir(tmp_path_factory):
    """A DiTTransformer2DModel (learned variance, label dropout's null row) + DDPMScheduler, pipeline layout."""
    from diffusers import DDPMScheduler, DiTTransformer2DModel

    torch.manual_seed(0)
    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                  num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=NUM_CLASSES)
    d = tmp_path_factory.mktemp("dit")
    model.save_pretrained(d / "transformer")
    DDPMScheduler(num_train_timesteps=1000, clip_sample=False, variance_type="learned_range").save_pretrained(
        d / "scheduler")
    return d


@pytest.fixture(scope="module")
def fm_dir(tmp_path_factory):
    """A velocity-predicting UNet2DModel + FlowMatchEulerDiscreteScheduler, flat layout."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=4)
    d = tmp_path_factory.mktemp("fm")
    unet.save_pretrained(d)
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0).save_pretrained(d)
    return d


def generate(out, teacher, *args):
    return CliRunner().invoke(cli, ["generate-trajectories", "--quiet", "--device", "cpu", "--teacher", str(teacher),
                                    "--num-samples", "12", "--steps", "4", "--shard-size", "6", "--out", str(out),
                                    *map(str, args)])


def mid_train(data, out, *args):
    return CliRunner().invoke(cli, ["mid-train", "--data", str(data), "--holdout", "4", "--steps", "2",
                                    "--batch-size", "4", "--eval-every", "2", "--sample-every", "0", "--out", str(out),
                                    "--device", "cpu", "--quiet", "--no-tensorboard", *map(str, args)])


def test_dit_teacher_matches_its_scheduler_and_knows_its_classes(dit_dir):
    from diffusers import DDPMScheduler, DiTTransformer2DModel

    teacher = load_teacher(str(dit_dir))
    assert teacher.shape == (4, 8, 8) and teacher.num_classes == NUM_CLASSES and teacher.null_label == NUM_CLASSES
    model = DiTTransformer2DModel.from_pretrained(dit_dir / "transformer").eval()
    sched = DDPMScheduler.from_pretrained(dit_dir / "scheduler")
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(NUM_CLASSES, (3,), generator=g)
    for t in (5, 400, 990):
        a = sched.alphas_cumprod[t]
        sigma = ((1 - a) / a).sqrt()
        x_vp = torch.randn(3, 4, 8, 8, generator=g)
        out = model(x_vp, torch.full((3,), t), class_labels=labels).sample
        expected = sched.step(out, t, x_vp).pred_original_sample  # splits off the learned variance itself
        got = teacher(x_vp * (1 + sigma**2).sqrt(), sigma, labels)
        assert torch.allclose(got, expected, atol=3e-5 * max(1.0, sigma.item())), (t, (got - expected).abs().max())


def test_flow_matching_mapping_is_exact_against_the_velocity_models_euler_steps(fm_dir):
    """Euler on D in EDM coordinates, read back as z = x / (1 + sigma), is the velocity model's own Euler
    integration z += (t' - t) v(z, t) on t = sigma / (1 + sigma), with the scheduler's time scale and step."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel

    teacher = load_teacher(str(fm_dir))
    assert teacher.describe()["parametrisation"] == "flow-matching"
    model = UNet2DModel.from_pretrained(fm_dir).eval()
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(fm_dir)
    sigmas = make_grid("logsnr", 6, 80.0, 0.002)
    prior = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    ts = (sigmas / (1 + sigmas)).float()
    sched.set_timesteps(sigmas=ts[:-1].tolist())  # shift 3 moves the grid: take the one it sets, in both
    ts = torch.cat([sched.sigmas[:-1], ts[-1:]])
    states = get_solver("euler")(teacher, prior * float(sigmas[0]), (ts / (1 - ts)).double(), None,
                                 return_intermediates=True)
    z = states[0] / (1 + float(ts[0] / (1 - ts[0])))
    for k in range(len(ts) - 1):
        v = model(z, sched.timesteps[k].expand(3)).sample
        if k < len(ts) - 2:
            z = sched.step(v, sched.timesteps[k], z).prev_sample  # the scheduler's own step to its next sigma
        else:
            z = z + (ts[k + 1] - ts[k]) * v  # the final step to t_min (the scheduler would go to 0)
        s_next = ts[k + 1] / (1 - ts[k + 1])
        ours = states[k + 1] / (1 + s_next)
        assert torch.allclose(ours, z, rtol=1e-4, atol=1e-5), (k, (ours - z).abs().max())


@pytest.mark.slow
def test_dit_and_flow_matching_stores_feed_mid_training(tmp_path, dit_dir, fm_dir):
    """Each teacher kind generates a store; both mid-training flavours read it and start from the teacher's
    own network (the MeanFlow gap enters each of the DiT's per-block time embeddings)."""
    for name, teacher in (("dit", dit_dir), ("fm", fm_dir)):
        r = generate(tmp_path / name, teacher)
        assert r.exit_code == 0, r.output
        data = read_all(tmp_path / name)
        assert data["traj"].shape[:2] == (12, 4) and np.isfinite(data["x0"].astype(np.float32)).all()
        for flavour in ("cm", "mf"):
            run = tmp_path / f"{name}-{flavour}"
            r = mid_train(tmp_path / name, run, "--flavour", flavour, "--init", "teacher")
            assert r.exit_code == 0, r.output
            ckpt = torch.load(run / "model.ckpt", weights_only=True)
            assert ckpt["kind"] == f"mid-{flavour}" and ckpt["step"] == 2
            assert json.loads((run / "eval.jsonl").read_text().splitlines()[-1])["step"] == 2
    r = CliRunner().invoke(cli, ["sample", "--ckpt", str(tmp_path / "fm-mf" / "model.ckpt"), "--steps", "1",
                                 "--num-samples", "4", "--npz", str(tmp_path / "s.npz"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "s.npz")["samples"].shape == (4, 1, 8, 8)
    for flavour, objective in (("cm", "ect"), ("mf", "meanflow")):  # post-training continues these students
        out = tmp_path / f"post-{objective}"
        r = CliRunner().invoke(cli, ["post-train", "--init", str(tmp_path / f"fm-{flavour}" / "model.ckpt"),
                                     "--objective", objective, "--data", "digits", "--steps", "2", "--batch-size", "4",
                                     "--eval-samples", "8", "--out", str(out), "--device", "cpu", "--quiet",
                                     "--no-tensorboard", "--sample-every", "0"])
        assert r.exit_code == 0, r.output
        assert torch.load(out / "model.ckpt", weights_only=True)["network"]["net"]["class"] == "DiffusersDenoiser"


def test_students_of_diffusers_teachers_start_as_the_teacher_and_rebuild_from_checkpoints(dit_dir, fm_dir):
    dit, fm = load_teacher(str(dit_dir)), load_teacher(str(fm_dir))
    labels = torch.arange(2) % NUM_CLASSES
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    cm = consistency_student(dit).eval()
    assert torch.allclose(cm(x, 0.003, labels), x, atol=1e-6)  # the boundary condition, exactly
    assert torch.allclose(cm(x, 40.0, labels), dit(x, 40.0, labels), rtol=1e-3)  # the teacher, up to O(s/sigma)
    mf = MeanFlowStudent(dit).eval()
    assert len(mf.gap_embeddings) == 2  # one per DiT block
    z, t = x / 3, torch.full((2,), 2 / 3)  # sigma = 2
    v = (x - dit(x, 2.0, labels)) / 2.0 - dit(x, 2.0, labels)  # d/dt of the flow-matching state at t
    assert torch.allclose(mf(z, 0.1, t, labels), mf(z, t, t, labels), atol=1e-5)
    assert torch.allclose(mf(z, 0.1, t, labels), v, atol=1e-4)
    fm_mf = MeanFlowStudent(fm).eval()
    xf = torch.randn(2, 1, 8, 8)
    native_v = fm.model(xf / 3, torch.full((2,), 2 / 3 * 1000)).sample  # the model's own output at its time
    assert torch.allclose(fm_mf(xf / 3, 0.0, t), native_v, atol=1e-4)
    for model in (cm, mf):
        rebuilt = build_network(network_spec(model))
        rebuilt.load_state_dict(model.state_dict())
        args = (x, 5.0, labels) if model is cm else (z, 0.2, t, labels)
        assert torch.equal(rebuilt.eval()(*args), model(*args))


@pytest.mark.parametrize("kind", ["fm", "dit"])
def test_meanflow_jvp_runs_through_attention_and_matches_finite_differences(kind, fm_dir, dit_dir):
    """MeanFlow's du/dt is a forward-mode JVP: the flow-matching UNet (mid-block attention, GroupNorm after it)
    and the DiT (attention in every block) must both go through it, and agree with central differences."""
    teacher = load_teacher(str(fm_dir if kind == "fm" else dit_dir))
    student = MeanFlowStudent(teacher).eval()
    g = torch.Generator().manual_seed(4)
    z, v = torch.randn(3, *teacher.shape, generator=g), 5 * torch.randn(3, *teacher.shape, generator=g)
    t = torch.tensor([0.3, 0.5, 0.8])
    r, labels = 0.5 * t, torch.arange(3) % NUM_CLASSES if teacher.num_classes else None
    _, dudt = meanflow_target(student, z, r, t, v, labels)
    with torch.no_grad():
        fd = (student(z + 3e-3 * v, r, t, labels) - student(z - 3e-3 * v, r, t, labels)) / 6e-3 \
            + (student(z, r, t + 1e-5, labels) - student(z, r, t - 1e-5, labels)) / 2e-5
    assert (dudt - fd).norm() / fd.norm() < 1e-2


def test_an_old_meanflow_checkpoint_layout_is_refused_clearly():
    with pytest.raises(CMTError, match="earlier cmt"):
        build_network({"class": "MeanFlowStudent", "unet": {}, "precond": {}, "gap_scale": 1000.0})


def test_guided_run_is_recorded_and_reproduces_bit_identically(tmp_path, dit_dir):
    teacher = load_teacher(str(dit_dir), guidance_scale=3.0)
    plain = load_teacher(str(dit_dir))
    x, labels = torch.randn(4, 4, 8, 8), torch.tensor([0, 1, 2, 3])
    cond, uncond = plain(x, 1.5, labels), plain(x, 1.5, torch.full((4,), NUM_CLASSES))
    assert torch.allclose(teacher(x, 1.5, labels), uncond + 3.0 * (cond - uncond), atol=1e-5)
    for out in ("a", "b"):
        r = generate(tmp_path / out, dit_dir, "--guidance-scale", 3, "--format", "wds")
        assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["guidance"] == {"scale": 3.0, "null_label": NUM_CLASSES}
    assert manifest["config"]["guidance_scale"] == 3.0
    r = CliRunner().invoke(cli, ["inspect", str(tmp_path / "a")])
    assert r.exit_code == 0 and f"scale 3, null label {NUM_CLASSES}" in r.output, r.output
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    a = read_all(tmp_path / "a")
    assert set(a["labels"]) <= set(range(NUM_CLASSES)) and len(set(a["labels"])) > 1  # drawn per (seed, index)
    assert generate(tmp_path / "c", dit_dir, "--format", "wds").exit_code == 0
    assert not np.array_equal(read_all(tmp_path / "c")["x0"], a["x0"])  # guidance changed the samples
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["guidance"] is None
    r = CliRunner().invoke(cli, ["evaluate", "--teacher", str(dit_dir), "--guidance-scale", "3", "--steps", "4",
                                 "--num-samples", "8", "--out", str(tmp_path / "e"), "--device", "cpu", "--quiet"])
    assert r.exit_code == 0 and "guidance 3" in r.output, r.output
    report = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    assert report["sampler"]["denoiser"]["guidance"] == {"scale": 3.0, "null_label": NUM_CLASSES}


def test_guidance_and_backbone_misuse_give_clear_errors(tmp_path, vp_teacher_dir, fm_dir):
    from diffusers import DDPMScheduler, UNet2DConditionModel

    r = generate(tmp_path / "u", fm_dir, "--guidance-scale", 2)
    assert r.exit_code == 2 and "unconditional" in r.output and not (tmp_path / "u").exists()
    r = generate(tmp_path / "n", vp_teacher_dir("epsilon", 3), "--guidance-scale", 2)
    assert r.exit_code == 2 and "--null-label" in r.output and not (tmp_path / "n").exists()
    # a UNet trained with its last class as "no class": guidance works and that class is never drawn
    r = generate(tmp_path / "ok", vp_teacher_dir("epsilon", 3), "--guidance-scale", 2, "--null-label", 2)
    assert r.exit_code == 0, r.output
    assert set(read_all(tmp_path / "ok")["labels"]) <= {0, 1}
    r = generate(tmp_path / "m", vp_teacher_dir("epsilon", 3), "--guidance-scale", 2, "--null-label", 0)
    assert r.exit_code == 2 and "--null-label 0" in r.output
    torch.manual_seed(0)
    text_unet = UNet2DConditionModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                     down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                     norm_num_groups=4, cross_attention_dim=8, attention_head_dim=2)
    text_unet.save_pretrained(tmp_path / "sd" / "unet")
    DDPMScheduler().save_pretrained(tmp_path / "sd" / "scheduler")
    r = generate(tmp_path / "t", tmp_path / "sd")
    assert r.exit_code == 2 and "encoder_hidden_states" in r.output and "DiTTransformer2DModel" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "t").exists()
    with pytest.raises(CMTError, match="unconditional"):
        load_teacher(str(fm_dir), guidance_scale=2.0)
    assert isinstance(load_teacher(str(fm_dir)), DiffusersDenoiser)
