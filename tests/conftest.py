"""Shared fixtures: tiny models built and saved in the test, so nothing is downloaded."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

torch.set_num_threads(1)  # CI has 2 cores; one thread per test process keeps timings predictable


def copier(base, tmp_path):
    """copy(name): a fresh copy of the pristine folder base/name under tmp_path, for a test that damages it."""
    def copy(name):
        shutil.copytree(base / name, tmp_path / name)
        return tmp_path / name
    return copy


@pytest.fixture(scope="module")
def s3():
    """A loopback S3 server (tests/s3_server.py) for the module: its environment (endpoint, credentials) applied
    to this process while the module runs, and given to subprocesses."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
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
