"""`cmt pretrain` end to end on tiny networks, its datasets and their errors, and the shipped digits teacher."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from cmt_pipeline.datasets import load_images
from cmt_pipeline.teachers import BUILTIN_DIGITS, load_teacher
from cmt_pipeline.models.io import load_model, model_from_checkpoint
from cmt_pipeline.errors import CMTError

TINY = ["--channels", "8,16", "--layers-per-block", "1", "--batch-size", "16", "--sample-steps", "2",
        "--device", "cpu", "--no-tensorboard", "--quiet"]


def cmt(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "run"
    r = cmt("pretrain", "--out", out, "--steps", 4, "--checkpoint-every", 2, "--sample-every", 2,
            "--log-every", 1, *TINY)
    assert r.exit_code == 0, r.output
    return out


def test_pretrain_writes_a_loadable_teacher(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"config.json", "log.jsonl", "checkpoints", "samples", "model.ckpt", "teacher"} <= names
    assert sorted(p.name for p in (tiny_run / "samples").iterdir()) == ["step-0000002.png", "step-0000004.png"]
    assert len((tiny_run / "log.jsonl").read_text().splitlines()) == 4
    rec = json.loads((tiny_run / "config.json").read_text())
    assert rec["kind"] == "pretrain" and rec["data"]["source"] == "digits" and rec["data"]["num_samples"] == 1797
    teacher = load_teacher(str(tiny_run / "teacher"))
    ckpt = load_model(tiny_run / "model.ckpt", kind="pretrain")
    assert ckpt["data"]["fingerprint"] == rec["data"]["fingerprint"]
    ema = model_from_checkpoint(ckpt)
    x, sigma = torch.randn(3, 1, 8, 8), torch.tensor([0.1, 1.0, 10.0])
    with torch.no_grad():
        torch.testing.assert_close(teacher(x, sigma), ema(x, sigma))  # the export is the EMA network
        assert not torch.allclose(ema(x, sigma), model_from_checkpoint(ckpt, ema=False)(x, sigma))


def test_pretrain_resume_and_guards(tiny_run):
    r = cmt("pretrain", "--out", tiny_run, "--steps", 4, *TINY)
    assert r.exit_code == 2 and "--resume latest" in r.output and "Traceback" not in r.output
    r = cmt("pretrain", "--out", tiny_run, "--steps", 6, "--resume", "latest", *TINY)
    assert r.exit_code == 2 and "different settings ['steps']" in r.output
    r = cmt("pretrain", "--out", tiny_run, "--steps", 4, "--resume", "latest", "--checkpoint-every", 2,
            "--sample-every", 2, "--log-every", 1, *TINY)
    assert r.exit_code == 0 and "no steps left" in r.output


def test_float16_export_loads_as_float32(tmp_path):
    out = tmp_path / "run"
    r = cmt("pretrain", "--out", out, "--steps", 1, "--export-dtype", "float16", "--class-conditional", *TINY)
    assert r.exit_code == 0, r.output
    teacher = load_teacher(str(out / "teacher"))
    assert teacher.num_classes == 10 and next(teacher.parameters()).dtype == torch.float32
    ema = model_from_checkpoint(load_model(out / "model.ckpt"))
    x, labels = torch.randn(2, 1, 8, 8), torch.tensor([3, 7])
    with torch.no_grad():
        torch.testing.assert_close(teacher(x, 1.0, labels), ema(x, 1.0, labels), atol=2e-3, rtol=2e-3)


def test_pretrain_gmm_and_bad_options(tmp_path):
    r = cmt("pretrain", "--out", tmp_path / "g", "--data", "gmm:gmm8x8", "--gmm-samples", 64, "--steps", 1, *TINY)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "g" / "config.json").read_text())["data"]["num_samples"] == 64
    for args, msg in [(["--data", "gmm:nope"], "unknown Gaussian-mixture preset"),
                      (["--data", "gmm:gmm8x8", "--class-conditional"], "needs labelled data"),
                      (["--data", tmp_path / "missing.npy"], "not digits, gmm:<preset>"),
                      (["--channels", "8,8,8,8,8"], "do not halve"),
                      (["--batch-size", "10", "--grad-accum", "4"], "multiple of processes x grad_accum")]:
        r = cmt("pretrain", "--out", tmp_path / "bad", "--steps", 1, *TINY, *args)
        assert r.exit_code == 2 and msg in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "bad" / "model.ckpt").exists()


# ---- datasets -----------------------------------------------------------------------------------------------

def test_digits_and_gmm_data():
    d = load_images("digits")
    assert d.images.shape == (1797, 1, 8, 8) and d.images.min() == -1 and d.images.max() == 1
    assert d.num_classes == 10 and sorted(d.labels.unique().tolist()) == list(range(10))
    g1, g2 = load_images("gmm:gmm8x8", 32, seed=1), load_images("gmm:gmm8x8", 32, seed=1)
    assert g1.images.shape == (32, 1, 8, 8) and torch.equal(g1.images, g2.images) and g1.labels is None


def test_npy_layouts_and_errors(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (5, 6, 4, 3), dtype=np.uint8)  # NHWC
    for name, arr in [("nhwc", x), ("nchw", x.transpose(0, 3, 1, 2)), ("nhw", x[..., 0])]:
        np.save(tmp_path / f"{name}.npy", arr)
        d = load_images(str(tmp_path / f"{name}.npy"))
        assert d.images.shape == ((5, 3, 6, 4) if name != "nhw" else (5, 1, 6, 4))
        assert d.images.min() >= -1 and d.images.max() <= 1
    torch.testing.assert_close(load_images(str(tmp_path / "nhwc.npy")).images,
                               load_images(str(tmp_path / "nchw.npy")).images)
    bad = {"range": np.full((2, 4, 4), 3.0, np.float32), "shape": np.zeros((2, 4), np.float32),
           "dtype": np.zeros((2, 4, 4), np.int32), "nan": np.full((2, 4, 4), np.nan, np.float32),
           "pickle": np.array([{"a": 1}], dtype=object)}
    msgs = {"range": "scale them to [-1, 1]", "shape": "expected (N, H, W)", "dtype": "use uint8",
            "nan": "NaN", "pickle": "cannot read"}
    for name, arr in bad.items():
        np.save(tmp_path / f"bad-{name}.npy", arr, allow_pickle=True)
        with pytest.raises(CMTError, match=re.escape(msgs[name])):
            load_images(str(tmp_path / f"bad-{name}.npy"))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(CMTError, match="cannot read"):
        load_images(str(tmp_path / "junk.npy"))


def test_image_folder(tmp_path):
    from PIL import Image

    (tmp_path / "a" / "sub").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((8, 8), 60 * i, np.uint8)).save(tmp_path / "a" / "sub" / f"{i}.png")
    d = load_images(str(tmp_path / "a"))
    assert d.images.shape == (3, 1, 8, 8) and d.images[0].max() == -1
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a" / "rgb.png")
    assert load_images(str(tmp_path / "a")).images.shape == (4, 3, 8, 8)  # any colour image -> RGB
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a" / "small.png")
    with pytest.raises(CMTError, match="differ in size"):
        load_images(str(tmp_path / "a"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CMTError, match="no images"):
        load_images(str(tmp_path / "empty"))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(CMTError, match="cannot read image"):
        load_images(str(tmp_path / "b"))


# ---- the shipped teacher ------------------------------------------------------------------------------------

def test_builtin_teacher_is_small_fp32_and_generates(tmp_path):
    size = sum(p.stat().st_size for p in BUILTIN_DIGITS.rglob("*") if p.is_file())
    assert size < 5.5e6
    teacher = load_teacher("builtin")
    assert teacher.shape == (1, 8, 8) and teacher.num_classes == 0
    assert next(teacher.parameters()).dtype == torch.float32
    r = cmt("generate-trajectories", "--teacher", "builtin", "--num-samples", 64, "--out", tmp_path / "y",
            "--quiet", "--device", "cpu")
    assert r.exit_code == 0, r.output


def test_time_scale_reaches_the_backbone_and_every_student(tmp_path):
    """--time-scale 1 (EDM's timestep input, smooth in sigma) is what the UNet sees, and survives the export, the
    checkpoint, a consistency student and a MeanFlow student's rebuild; fresh mid/post-training UNets take it too."""
    from cmt_pipeline.config import MidTrainConfig, PostTrainConfig, load_config
    from cmt_pipeline.models import MeanFlowStudent, consistency_student
    from cmt_pipeline.models.io import build_network, network_spec
    from cmt_pipeline.teachers.gmm import GMMDenoiser
    from cmt_pipeline.training.midtrain import build_student
    from cmt_pipeline.training.posttrain import random_network

    out = tmp_path / "run"
    r = cmt("pretrain", "--out", out, "--data", "gmm:gmm8x8", "--gmm-samples", 64, "--steps", 1,
            "--time-scale", 1, *TINY)
    assert r.exit_code == 0, r.output
    teacher = load_teacher(str(out / "teacher"))
    assert json.loads((out / "teacher" / "cmt_precond.json").read_text())["time_scale"] == 1.0
    seen = []
    teacher.backbone.register_forward_pre_hook(lambda m, a: seen.append(a[1].clone()))
    sigma = torch.tensor([0.02, 1.0, 80.0])
    with torch.no_grad():
        teacher(torch.randn(3, 1, 8, 8), sigma)
    torch.testing.assert_close(seen[0], sigma.log() / 4)  # 1000x that with the default scale
    ckpt_net = model_from_checkpoint(load_model(out / "model.ckpt"))
    assert build_network(network_spec(consistency_student(ckpt_net))).precond.time_scale == 1.0
    assert build_network(network_spec(MeanFlowStudent(ckpt_net))).net.precond.time_scale == 1.0

    gmm = load_teacher("gmm:gmm8x8")
    assert isinstance(gmm, GMMDenoiser)
    mid = build_student(load_config(MidTrainConfig, None, None, init="random", channels=[8, 16], layers_per_block=1,
                                    time_scale=1.0), gmm, gmm.shape)
    assert mid.precond.time_scale == 1.0
    post = random_network(load_config(PostTrainConfig, None, None, channels=[8, 16], layers_per_block=1,
                                      time_scale=1.0), (1, 8, 8))
    assert post.precond.time_scale == 1.0
    assert random_network(load_config(PostTrainConfig, None, None, channels=[8, 16], layers_per_block=1),
                          (1, 8, 8)).precond.time_scale == 1000.0

    # a student from that teacher records the scale it has, and refuses another one instead of ignoring it
    post_args = ("post-train", "--init", out / "model.ckpt", "--data", "gmm:gmm8x8", "--gmm-samples", 64, "--steps", 1,
                 "--batch-size", 8, "--eval-samples", 8, "--num-grid-samples", 4, "--quiet", "--no-tensorboard",
                 "--device", "cpu")
    r = cmt(*post_args, "--out", tmp_path / "post")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "post" / "config.json").read_text())["config"]["time_scale"] == 1.0
    assert load_model(tmp_path / "post" / "model.ckpt")["config"]["time_scale"] == 1.0
    r = cmt(*post_args, "--time-scale", 1000, "--out", tmp_path / "post-1000")
    assert r.exit_code != 0 and "--time-scale 1000 only shapes a fresh UNet" in r.output and "scale 1" in r.output
    assert not (tmp_path / "post-1000").exists()
    from cmt_pipeline.training.stage import with_time_scale
    copied = build_student(load_config(MidTrainConfig, None, None, init="teacher"), teacher, teacher.shape)
    assert with_time_scale(load_config(MidTrainConfig, None, None), copied, "t").time_scale == 1.0
    with pytest.raises(CMTError, match="only shapes a fresh UNet, and the teacher has timestep scale 1;"):
        with_time_scale(load_config(MidTrainConfig, None, None, time_scale=1000.0), copied, "the teacher")
