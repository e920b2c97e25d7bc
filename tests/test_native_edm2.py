"""The native EDM2 Precond (teachers/edm2.py, networks/edm2.py) with no reference code: outputs equal to NVlabs/edm2's
on a stored fixture (written by `benchmarks/equality_edm2.py --write-fixture`), its folder round trip, and its
SD-VAE latent space through latents.py with a tiny random AutoencoderKL saved in the test (nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from cli.main import cli
from cmt_pipeline.errors import CMTError
from cmt_pipeline.latents import LatentCodec, load_vae
from cmt_pipeline.models.io import load_model, open_network
from cmt_pipeline.teachers import EDM2Precond, load_teacher
from cmt_pipeline.teachers.native import build_native

FIXTURE = Path(__file__).parent / "data" / "edm2_reference.safetensors"
# EDM2's img512 encoder record (StabilityVAEEncoder's defaults), as a snapshot's encoder kwargs give it.
ENCODER = {"vae_name": "stabilityai/sd-vae-ft-mse", "raw_mean": [5.81, 3.25, 0.12, -2.15],
           "raw_std": [4.17, 4.62, 3.71, 3.28], "final_mean": 0, "final_std": 0.5}
LATENT_NET = dict(img_resolution=4, img_channels=4, label_dim=3, model_channels=4, channel_mult=[1, 2],
                  num_blocks=1, attn_resolutions=[2], channels_per_head=4, logvar_channels=4)
TINY_VAE = {"in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 2,
            "up_block_types": ("UpDecoderBlock2D",) * 2, "block_out_channels": (8, 16), "layers_per_block": 1,
            "latent_channels": 4, "norm_num_groups": 4, "sample_size": 8}
IMAGE, LATENT = (3, 8, 8), (4, 4, 4)


def fixture_cases():
    with safe_open(FIXTURE, "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
        for name, kwargs in meta.items():
            get = {k[len(name) + 1:]: f.get_tensor(k) for k in keys if k.startswith(name + "/")}
            state = {k[len("state/"):]: v for k, v in get.items() if k.startswith("state/")}
            yield pytest.param(json.loads(kwargs), state, get, id=name)


@pytest.mark.parametrize("kwargs,state,data", list(fixture_cases()))
def test_native_precond_equals_the_reference_outputs(kwargs, state, data):
    net = build_native("Precond", kwargs)
    net.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = net.eval()(data["x"], data["sigma"], data.get("labels"))
    ref = data["out"]
    assert out.dtype == torch.float32 and net.shape == (kwargs["img_channels"],) + (kwargs["img_resolution"],) * 2
    assert float((out - ref).norm() / ref.norm()) <= 1e-5
    # the fixture's gains are non-zero: the U-Net's term, not only c_skip x, is compared
    c_skip = 0.25 / (data["sigma"] ** 2 + 0.25)
    assert float((ref - c_skip[:, None, None, None] * data["x"]).norm() / ref.norm()) > 0.1


def edm2_teacher(tmp_path, latents=None, **overrides) -> Path:
    torch.manual_seed(0)
    net = build_native("Precond", {**LATENT_NET, **overrides})
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 0:
                p.fill_(1.0)
    net.latents, net.source = latents, {"snapshot": "test.pkl", "sha256": "0" * 64}
    net.save(tmp_path / "edm2")
    return tmp_path / "edm2"


def test_folder_round_trip_keeps_weights_latents_and_source(tmp_path):
    folder = edm2_teacher(tmp_path, ENCODER)
    original = EDM2Precond.load(folder)
    teacher = load_teacher(str(folder))
    assert isinstance(teacher, EDM2Precond) and teacher.latents == ENCODER and teacher.source["snapshot"] == "test.pkl"
    assert teacher.spec() == original.spec() and teacher.fingerprint() == original.fingerprint()
    x, labels = torch.randn(2, *LATENT), torch.tensor([0, 2])
    with torch.no_grad():
        torch.testing.assert_close(teacher(x, 1.5, labels), original.eval()(x, 1.5, labels), rtol=0, atol=0)


@pytest.fixture
def vae_dir(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    d = tmp_path / "sd-vae"
    AutoencoderKL(**TINY_VAE).save_pretrained(d)
    return d


def test_edm2_latents_encode_and_decode_as_its_stability_vae_encoder(tmp_path, vae_dir):
    teacher = edm2_teacher(tmp_path, ENCODER)
    codec = load_vae(str(vae_dir), str(teacher), shape=LATENT)
    assert codec.encoder == ENCODER and codec.describe(LATENT)["encoder"] == ENCODER
    # EDM2's encoders.py: final = raw * scale + bias, the VAE sees pixels in [0, 1] and returns them in [0, 1]
    scale = torch.tensor(0.5) / torch.tensor(ENCODER["raw_std"]).view(1, 4, 1, 1)
    bias = -torch.tensor(ENCODER["raw_mean"]).view(1, 4, 1, 1) * scale
    images = torch.rand(2, *IMAGE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = torch.randn(2, *LATENT, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        raw = codec.vae.encode((images + 1) / 2).latent_dist.mean
        torch.testing.assert_close(codec.encode(images), raw * scale + bias)
        pixels01 = codec.vae.decode((z - bias) / scale).sample.clamp(0, 1)
        torch.testing.assert_close(codec.decode(z), pixels01 * 2 - 1)

    # a saved copy (a student's vae/) keeps the record, so it decodes alike without the teacher
    codec.save(tmp_path / "copy")
    assert LatentCodec.load(tmp_path / "copy").encoder == ENCODER


def test_a_latent_teacher_without_vae_is_a_one_line_error_naming_the_vae(tmp_path, vae_dir):
    teacher = edm2_teacher(tmp_path, ENCODER)
    with pytest.raises(CMTError, match="stabilityai/sd-vae-ft-mse") as e:
        load_vae("", str(teacher))
    assert "--vae" in str(e.value) and "\n" not in str(e.value)
    out = tmp_path / "traj"
    r = CliRunner().invoke(cli, ["generate-trajectories", "--teacher", str(teacher), "--num-samples", "2",
                                 "--steps", "2", "--device", "cpu", "--quiet", "--out", str(out)])
    assert r.exit_code != 0 and "stabilityai/sd-vae-ft-mse" in r.output and "--vae DIR" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (out / "plan.json").exists()
    # a pixel-space network needs none
    assert load_vae("", str(edm2_teacher(tmp_path / "pixel"))) is None


def test_two_training_forwards_before_one_backward(tmp_path):
    """ECT runs the student twice per step (its target without gradients); the forced weight normalisation of the
    second call must not invalidate the first call's graph."""
    net = EDM2Precond.load(edm2_teacher(tmp_path)).train()
    x, labels = torch.randn(2, *LATENT), torch.tensor([0, 1])
    out = net(x, 2.0, labels)
    with torch.no_grad():
        net(x, 1.0, labels)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in net.unet.parameters() if p.ndim > 1)


@pytest.mark.slow
def test_latent_edm2_teacher_through_generate_mid_post_train_and_evaluate(tmp_path, vae_dir):
    """Every stage keeps the EDM2 encoder record with its VAE, so the latents are read and decoded alike throughout,
    the exported student (its network folder, boundary record and vae/) included."""
    teacher = edm2_teacher(tmp_path, ENCODER, label_dim=0)  # the .npy images below have no labels
    train = ["--device", "cpu", "--no-tensorboard", "--quiet", "--checkpoint-every", "1000", "--sample-every", "0"]
    np.save(tmp_path / "images.npy", (np.random.default_rng(0).random((16, *IMAGE)) * 2 - 1).astype(np.float32))
    steps = [
        ["generate-trajectories", "--teacher", teacher, "--vae", vae_dir, "--num-samples", 12, "--steps", 4,
         "--shard-size", 8, "--batch-size", 8, "--device", "cpu", "--quiet", "--out", tmp_path / "traj"],
        ["mid-train", "--data", tmp_path / "traj", "--out", tmp_path / "mid", "--steps", 2, "--batch-size", 2,
         "--holdout", 4, "--eval-samples", 4, *train],
        ["post-train", "--init", tmp_path / "mid" / "model.ckpt", "--data", tmp_path / "images.npy", "--out",
         tmp_path / "post", "--steps", 2, "--batch-size", 4, "--eval-samples", 4, *train],
        ["evaluate", "--student", tmp_path / "post" / "model.ckpt", "--num-samples", 4, "--device", "cpu", "--quiet",
         "--out", tmp_path / "eval"],
        ["export", "--ckpt", tmp_path / "post" / "model.ckpt", "--out", tmp_path / "export"],
        ["sample", "--ckpt", tmp_path / "post" / "model.ckpt", "--steps", 2, "--num-samples", 4, "--device", "cpu",
         "--npz", tmp_path / "ckpt.npz"],
        ["sample", "--ckpt", tmp_path / "export", "--steps", 2, "--num-samples", 4, "--device", "cpu",
         "--npz", tmp_path / "export.npz"],
    ]
    for args in steps:
        r = CliRunner().invoke(cli, [str(a) for a in args])
        assert r.exit_code == 0, (args[0], r.output)
    assert json.loads((tmp_path / "traj" / "manifest.json").read_text())["vae"]["encoder"] == ENCODER
    for run in ("mid", "post"):
        data = load_model(tmp_path / run / "model.ckpt")["data"]
        assert data["vae"]["encoder"] == ENCODER and data["shape"] == list(LATENT)
    student = open_network(tmp_path / "post" / "model.ckpt").module
    assert any(isinstance(m, EDM2Precond) for m in student.modules())  # rebuilt from the checkpoint's spec
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert result["vae"]["encoder"] == ENCODER and result["vae"]["image_shape"] == list(IMAGE)
    with np.load(tmp_path / "ckpt.npz") as a, np.load(tmp_path / "export.npz") as b:  # decoded by the export's vae/
        assert a["samples"].shape == (4, *IMAGE) and np.array_equal(a["samples"], b["samples"])
