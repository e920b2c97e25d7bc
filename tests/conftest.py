"""Shared fixtures: tiny models built and saved in the test, so nothing is downloaded."""

from __future__ import annotations

import os
import shutil

import pytest

from cmt_pipeline.threads import openmp_wait

# how OpenMP's idle threads wait, chosen before torch loads as the CLI chooses it: its in-process commands size the
# pool to the CPUs, and libgomp's default spinning, on a CI machine busy with other jobs, took about half the
# suite's CPU time in a second thread that mostly spun
os.environ.update(openmp_wait())

import torch  # noqa: E402

torch.set_num_threads(1)  # CI has 2 cores; one thread per test process keeps timings predictable


@pytest.fixture(autouse=True)
def evaluation_cache(tmp_path, monkeypatch):
    """Each test its own evaluation cache (cmt evaluate --cache), never the user's: no test reads another's rows."""
    monkeypatch.setenv("CMT_CACHE", str(tmp_path / "cmt-cache"))
    return tmp_path / "cmt-cache" / "evaluations"


def copier(base, tmp_path):
    """copy(name): a fresh copy of the pristine folder base/name under tmp_path, for a test that damages it."""
    def copy(name):
        shutil.copytree(base / name, tmp_path / name)
        return tmp_path / name
    return copy


def loss_of(cls, **kw):
    """The objective `cls` as the stages build it, from its config's defaults, `kw` overriding config fields and
    giving the rest (sigmas, lpips, sigma_data: 0.5 unless given)."""
    import dataclasses

    from cmt_pipeline.config import MidTrainConfig, PostTrainConfig, PretrainConfig
    from cmt_pipeline.constants import SIGMA_DATA
    from cmt_pipeline.objectives import from_config
    from cmt_pipeline.training.posttrain import validate

    post = {"ECTLoss": "ect", "MeanFlowLoss": "meanflow"}
    config = PostTrainConfig if cls.__name__ in post else PretrainConfig if cls.__name__ == "EDMLoss" else MidTrainConfig
    names = {f.name for f in dataclasses.fields(config)}
    cfg = config()
    for k in names & set(kw):  # set, not validated: an objective test may use values a stage would refuse alone
        setattr(cfg, k, kw[k])
    if config is PostTrainConfig:
        cfg = validate(dataclasses.replace(cfg, init="builtin", objective=post[cls.__name__]))
    if cls.__name__ == "ECTLoss":
        kw.setdefault("sigma_data", SIGMA_DATA)
    return from_config(cls, cfg, **{k: v for k, v in kw.items() if k not in names})


@pytest.fixture(scope="module")
def s3():
    """A loopback S3 server (tests/s3_server.py) for the module: its environment (endpoint, credentials) applied
    to this process while the module runs, and given to subprocesses."""
    import moto.server  # noqa: F401  test dependencies (pyproject [test]): missing, the S3 tests fail, not skip
    import s3fs  # noqa: F401
    from s3_server import local_s3

    saved = dict(os.environ)
    with local_s3() as env:
        os.environ.update(env)
        try:
            yield env
        finally:
            os.environ.clear()
            os.environ.update(saved)


@pytest.fixture(scope="session")
def vp_teacher_dir(tmp_path_factory):
    """Factory: a diffusers UNet2DModel + DDPMScheduler saved in the pipeline layout (unet/, scheduler/)."""

    def make(prediction_type="epsilon", num_classes=0, in_channels=1, out_channels=None, size=8):
        from diffusers import DDPMScheduler, UNet2DModel

        torch.manual_seed(0)
        unet = UNet2DModel(sample_size=size, in_channels=in_channels, out_channels=out_channels or in_channels,
                           block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4,
                           num_class_embeds=num_classes or None)
        sched = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=False)
        d = tmp_path_factory.mktemp(f"vp-{prediction_type}-{num_classes}-{out_channels}")
        unet.save_pretrained(d / "unet")
        sched.save_pretrained(d / "scheduler")
        return d

    return make


@pytest.fixture(scope="session")
def teachers(vp_teacher_dir):
    """One of every kind of teacher the solver loop drives, small and seeded (shared: tests deep-copy to change one)."""
    from cmt_pipeline.teachers import load_teacher
    from cmt_pipeline.teachers.dit import DiTDenoiser
    from cmt_pipeline.teachers.guidance import guided
    from cmt_pipeline.teachers.native import build_native

    conditional = load_teacher(str(vp_teacher_dir(num_classes=4)))
    torch.manual_seed(0)
    edm2 = build_native("Precond", dict(img_resolution=4, img_channels=4, label_dim=3, model_channels=4,
                                        channel_mult=[1, 2], num_blocks=1, attn_resolutions=[2],
                                        channels_per_head=4, logvar_channels=4))
    dit = DiTDenoiser(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=3)
    return {"digits": load_teacher("builtin"), "gmm": load_teacher("gmm:gmm8x8"),
            "vp": load_teacher(str(vp_teacher_dir())), "guided": guided(conditional, 2.0, 3),
            "edm2": edm2.eval(), "dit": dit.eval()}
