"""Latent-space (VAE) teachers: the codec, and a latent teacher's data through generation, mid-training, sampling,
evaluation, inspection, pre- and post-training, on tiny random-weight models saved in the test (nothing downloaded).

The tiny VAE maps 1x8x8 images to 4x4x4 latents, so "decoded" is visible in every output's shape."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli.main import cli
from cmt_pipeline.latents import LatentCodec
from cmt_pipeline.stores import read_all
from cmt_pipeline.teachers import EDMDenoiser, Precond, build_unet, load_teacher
from cmt_pipeline.models.io import load_model

TINY_VAE = {"in_channels": 1, "out_channels": 1, "down_block_types": ("DownEncoderBlock2D",) * 2,
            "up_block_types": ("UpDecoderBlock2D",) * 2, "block_out_channels": (8, 16), "layers_per_block": 1,
            "latent_channels": 4, "norm_num_groups": 4, "sample_size": 8, "scaling_factor": 0.5}
IMAGE, LATENT = (1, 8, 8), (4, 4, 4)
TRAIN = ["--device", "cpu", "--no-tensorboard", "--quiet", "--checkpoint-every", "1000", "--sample-every", "0"]


def cmt(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def tiny_vae(**overrides):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(**{**TINY_VAE, **overrides})


def grey_grid(path, n: int = 64) -> bool:
    """A grid of n decoded 1x8x8 images: tiled ceil(sqrt(n)) per row with 1 px padding, upscaled 4x to 32 px tiles
    (n 4x4x4 latents would give an RGBA picture of another size)."""
    per_row = math.ceil(math.sqrt(n))
    with Image.open(path) as im:
        return im.mode == "L" and im.size == ((per_row * 9 + 1) * 4, (math.ceil(n / per_row) * 9 + 1) * 4)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("vae") / "vae"
    tiny_vae().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def latent_teacher(tmp_path_factory):
    """A latent-space EDM teacher (random weights) on the VAE's 4x4x4 latents, without a vae/ of its own."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("teacher") / "teacher"
    EDMDenoiser(build_unet(LATENT, channels=(8, 16), layers_per_block=1), Precond()).save(d)
    return d


@pytest.fixture(scope="module")
def store(tmp_path_factory, latent_teacher, vae_dir):
    out = tmp_path_factory.mktemp("store") / "traj"
    r = cmt("generate-trajectories", "--teacher", latent_teacher, "--vae", vae_dir, "--num-samples", 12, "--steps", 4,
            "--shard-size", 8, "--batch-size", 8, "--device", "cpu", "--quiet", "--out", out)
    assert r.exit_code == 0, r.output
    return out


def test_codec_scales_latents_like_diffusers_and_decodes_to_images(vae_dir, tmp_path):
    codec = LatentCodec.load(vae_dir)
    x = torch.rand(3, *IMAGE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = codec.encode(x)
    assert z.shape == (3, *LATENT) and codec.latent_shape(IMAGE) == LATENT and codec.image_shape(LATENT) == IMAGE
    with torch.no_grad():
        mean = codec.vae.encode(x).latent_dist.mean
        torch.testing.assert_close(z, mean * 0.5)  # deterministic: the posterior mean, times scaling_factor
        torch.testing.assert_close(codec.encode(x), z)
        images = codec.decode(z)
        torch.testing.assert_close(images, codec.vae.decode(mean).sample.clamp(-1, 1))
    assert images.shape == (3, *IMAGE) and images.abs().max() <= 1
    d = codec.describe(LATENT)
    assert d["class"] == "AutoencoderKL" and d["scaling_factor"] == 0.5 and d["shift_factor"] is None
    assert d["latent_shape"] == list(LATENT) and d["image_shape"] == list(IMAGE) and len(d["fingerprint"]) == 64
    assert d["path"] == str(vae_dir.resolve())

    # shift_factor (SD3/Flux) and per-channel latents_mean/std follow the diffusers pipelines' conventions
    lm, ls = torch.tensor([0.1, -0.2, 0.3, 0.0]), torch.tensor([1.0, 2.0, 0.5, 4.0])
    for kw, shift, scale in (({"shift_factor": 0.2}, torch.tensor(0.2), torch.tensor(0.5)),
                             ({"latents_mean": lm.tolist(), "latents_std": ls.tolist()}, lm, 0.5 / ls)):
        other = LatentCodec(tiny_vae(**kw), tmp_path)
        with torch.no_grad():
            mean = other.vae.encode(x).latent_dist.mean
            torch.testing.assert_close(other.encode(x), (mean - shift.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1))
            z = torch.randn(2, *LATENT)
            torch.testing.assert_close(other.decode(z), other.vae.decode(
                z / scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)).sample.clamp(-1, 1))
        assert {k: other.describe()[k] for k in kw} == kw


@pytest.mark.slow
def test_latent_store_records_its_vae_and_mid_training_sampling_evaluation_decode(store, vae_dir, tmp_path):
    manifest = json.loads((store / "manifest.json").read_text())
    vae = manifest["vae"]
    assert manifest["shape"] == list(LATENT) and read_all(store)["traj"].shape == (12, 4, *LATENT)
    assert vae["scaling_factor"] == 0.5 and vae["path"] == str(vae_dir.resolve())
    assert vae["fingerprint"] == LatentCodec.load(vae_dir).fingerprint()
    assert vae["latent_shape"] == list(LATENT) and vae["image_shape"] == list(IMAGE)

    run = tmp_path / "mid"
    r = cmt("mid-train", "--data", store, "--out", run, "--steps", 2, "--batch-size", 2, "--holdout", 4,
            "--eval-samples", 4, *TRAIN)
    assert r.exit_code == 0, r.output
    assert grey_grid(run / "samples" / "step-0000002.png")
    assert load_model(run / "model.ckpt")["data"]["vae"]["fingerprint"] == vae["fingerprint"]
    assert (run / "student" / "vae" / "config.json").is_file()
    r = cmt("inspect", run / "model.ckpt")
    assert r.exit_code == 0 and str(vae_dir.resolve()) in r.output, r.output

    # the student knows its VAE: no --vae needed, from the checkpoint or from the student folder
    codec = LatentCodec.load(vae_dir)
    for spec in (run / "model.ckpt", run / "student"):
        npz, png = tmp_path / "s.npz", tmp_path / "s.png"
        r = cmt("sample", "--ckpt", spec, "--num-samples", 5, "--npz", npz, "--out", png, "--device", "cpu",
                "--overwrite")  # the second spec replaces the first one's files
        assert r.exit_code == 0, r.output
        data = np.load(npz)
        assert data["samples"].shape == (5, *IMAGE) and data["latents"].shape == (5, *LATENT)
        torch.testing.assert_close(torch.from_numpy(data["samples"]), codec.decode(torch.from_numpy(data["latents"])))
        with Image.open(png) as im:
            assert im.mode == "L"

    r = cmt("evaluate", "--student", run / "model.ckpt", "--num-samples", 8, "--store", store, "--store-samples", 4,
            "--device", "cpu", "--quiet", "--out", tmp_path / "eval")
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert result["vae"]["fingerprint"] == vae["fingerprint"]
    assert np.isfinite(result["metrics"]["digits_fd"]) and "paired_mse" in result["metrics"]  # decoded 1x8x8

    r = cmt("inspect", store, "--png", tmp_path / "traj.png", "--num", 2)
    assert r.exit_code == 0 and "scaling factor 0.5" in r.output, r.output
    with Image.open(tmp_path / "traj.png") as im:
        assert im.mode == "L"  # decoded states, not 4 latent channels


@pytest.mark.slow
def test_pretrain_with_vae_writes_a_self_contained_latent_teacher(vae_dir, tmp_path):
    run = tmp_path / "pre"
    r = cmt("pretrain", "--vae", vae_dir, "--data", "digits", "--out", run, "--steps", 2, "--channels", "8,16",
            "--layers-per-block", 1, "--batch-size", 16, "--sample-steps", 2, *TRAIN)
    assert r.exit_code == 0, r.output
    fingerprint = LatentCodec.load(vae_dir).fingerprint()
    assert load_teacher(str(run / "teacher")).shape == LATENT
    assert LatentCodec.load(run / "teacher").fingerprint() == fingerprint  # its vae/ subfolder
    data = load_model(run / "model.ckpt")["data"]
    assert data["vae"]["fingerprint"] == fingerprint and data["shape"] == list(LATENT) and data["latent_std"] > 0
    assert grey_grid(run / "samples" / "step-0000002.png")

    # generation finds the teacher folder's own vae/ without --vae
    r = cmt("generate-trajectories", "--teacher", run / "teacher", "--num-samples", 4, "--steps", 2, "--device", "cpu",
            "--quiet", "--out", tmp_path / "traj")
    assert r.exit_code == 0, r.output
    vae = json.loads((tmp_path / "traj" / "manifest.json").read_text())["vae"]
    assert vae["path"] == str((run / "teacher" / "vae").resolve()) and vae["fingerprint"] == fingerprint

    # post-training from it: the digits are encoded with the recorded VAE, samples decoded and measured
    post = tmp_path / "post"
    r = cmt("post-train", "--init", run / "model.ckpt", "--data", "digits", "--out", post, "--steps", 2,
            "--batch-size", 16, "--eval-samples", 8, *TRAIN)
    assert r.exit_code == 0, r.output
    metrics = json.loads((post / "metrics.json").read_text())
    assert np.isfinite(metrics["1step_digits_fd"]) and np.isfinite(metrics["2step_digits_fd"])
    assert grey_grid(post / "samples-1step.png", 8)  # the first eval_samples
    assert load_model(post / "model.ckpt")["data"]["vae"]["fingerprint"] == fingerprint


def test_bad_vae_is_one_line_error_and_writes_nothing(tmp_path, vae_dir, latent_teacher):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    cases = [
        (["--teacher", latent_teacher, "--vae", tmp_path / "nope"], "does not exist"),
        (["--teacher", latent_teacher, "--vae", tmp_path / "empty"], "no readable config.json"),
        (["--teacher", latent_teacher, "--vae", latent_teacher], "holds a UNet2DModel, not an AutoencoderKL"),
        (["--teacher", "builtin", "--vae", vae_dir], "has 4 latent channels but the teacher works on 1 channels"),
    ]
    for args, pattern in cases:
        r = cmt("generate-trajectories", *args, "--num-samples", 4, "--device", "cpu", "--quiet", "--out", out)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), r.output
        assert pattern in lines[0], lines[0]
        assert not out.exists(), args
    r = cmt("pretrain", "--vae", tmp_path / "empty", "--out", out, "--steps", 1, *TRAIN)
    assert r.exit_code == 2 and "AutoencoderKL" in r.output and not out.exists(), r.output


def test_a_dit_pipeline_folder_brings_its_own_vae(tmp_path, vae_dir):
    """DiTPipeline.save_pretrained's layout (transformer/ + scheduler/ + vae/): found without --vae, decoded when
    the teacher itself is evaluated."""
    from diffusers import AutoencoderKL, DDPMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                num_layers=1, sample_size=4, patch_size=2, num_embeds_ada_norm=3)
    sched = DDPMScheduler(num_train_timesteps=1000, clip_sample=False, variance_type="learned_range")
    DiTPipeline(dit, AutoencoderKL.from_pretrained(vae_dir), sched).save_pretrained(tmp_path / "dit")
    r = cmt("generate-trajectories", "--teacher", tmp_path / "dit", "--num-samples", 3, "--steps", 2,
            "--device", "cpu", "--quiet", "--out", tmp_path / "traj")
    assert r.exit_code == 0, r.output
    vae = json.loads((tmp_path / "traj" / "manifest.json").read_text())["vae"]
    assert vae["path"] == str((tmp_path / "dit" / "vae").resolve()) and vae["image_shape"] == list(IMAGE)
    r = cmt("evaluate", "--teacher", tmp_path / "dit", "--steps", 2, "--num-samples", 4, "--device", "cpu", "--quiet",
            "--out", tmp_path / "eval")
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert result["vae"]["fingerprint"] == vae["fingerprint"] and "digits_fd" in result["metrics"]
