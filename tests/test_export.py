"""`cmt sample` and `cmt export`: an exported diffusers folder reproduces the in-process student bit for bit,
in a fresh Python process that imports only the pipeline class."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from cmt_pipeline.models import MeanFlowStudent, consistency_student
from cmt_pipeline.sampling import StudentSampler, load_student, sample, student_sigmas
from cmt_pipeline.teachers import EDMDenoiser, Precond, build_unet
from cmt_pipeline.training.checkpoint import save_model

FRESH = """
import sys, numpy as np, torch
torch.set_num_threads(1)
from cmt_pipeline.export import FewStepPipeline
out = {}
for name in sys.argv[2:]:
    pipe = FewStepPipeline.from_pretrained(sys.argv[1] + "/" + name)
    ref = np.load(sys.argv[1] + f"/{name}.npz")
    for steps in (1, 2):
        images = pipe(noise=torch.from_numpy(ref["prior"]), renoise=torch.from_numpy(ref["renoise"]), steps=steps,
                      output_type="pt").images
        out[f"{name}_{steps}"] = images.numpy()
np.savez(sys.argv[1] + "/fresh.npz", **out)
"""


def student(kind, seed=0):
    torch.manual_seed(seed)
    net = EDMDenoiser(build_unet((1, 8, 8), channels=(8, 16), layers_per_block=1), Precond())
    if kind == "post-ect":
        return consistency_student(net)
    mf = MeanFlowStudent(net)
    torch.nn.init.normal_(mf.gap_embeddings[0].linear_2.weight, std=0.2)  # so a dropped gap would show
    return mf


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("students")
    paths = {}
    for kind in ("post-ect", "post-meanflow"):
        m = student(kind).eval()
        paths[kind] = root / f"{kind}.ckpt"
        save_model(paths[kind], kind=kind, model=m, ema_model=m, step=0, config={}, data={})
    return paths


def test_exported_folder_reproduces_the_samples_bitwise_in_a_fresh_process(ckpts, tmp_path):
    for kind, ckpt in ckpts.items():
        r = CliRunner().invoke(cli, ["export", "--ckpt", str(ckpt), "--out", str(tmp_path / kind)])
        assert r.exit_code == 0, r.output
        assert json.loads((tmp_path / kind / "model_index.json").read_text())["parametrisation"] == \
            ("consistency" if kind == "post-ect" else "meanflow")
        ref = {}
        for steps in (1, 2):
            sampler = StudentSampler(load_student(str(ckpt)), student_sigmas(steps))
            x, prior, _, renoise = sample(sampler, 12, seed=3)
            ref[f"x{steps}"], ref["prior"] = x.numpy(), prior
            ref["renoise"] = renoise if renoise is not None else ref.get("renoise")
        np.savez(tmp_path / f"{kind}.npz", **ref)
    subprocess.run([sys.executable, "-c", FRESH, str(tmp_path), *ckpts], check=True, timeout=300)
    fresh = np.load(tmp_path / "fresh.npz")
    for kind in ckpts:
        ref = np.load(tmp_path / f"{kind}.npz")
        for steps in (1, 2):
            assert np.array_equal(fresh[f"{kind}_{steps}"], ref[f"x{steps}"]), (kind, steps)
        assert not np.array_equal(ref["x1"], ref["x2"])


def test_the_meanflow_gap_reaches_the_exported_unet(ckpts, tmp_path):
    """The gap t - r enters the UNet as its class label: zeroing that embedding changes the samples."""
    from cmt_pipeline.export import FewStepPipeline, export_pipeline
    from diffusers import UNet2DModel

    mf = student("post-meanflow").eval()
    export_pipeline(mf, tmp_path / "mf")
    unet = UNet2DModel.from_pretrained(tmp_path / "mf" / "unet")  # a plain diffusers model directory
    assert unet.config.class_embed_type == "timestep"
    pipe = FewStepPipeline.from_pretrained(tmp_path / "mf")
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with_gap = pipe(noise=noise, output_type="pt").images
    torch.nn.init.zeros_(pipe.unet.class_embedding.linear_2.weight)
    assert not torch.allclose(pipe(noise=noise, output_type="pt").images, with_gap)
    images = FewStepPipeline.from_pretrained(tmp_path / "mf")(batch_size=3, steps=2,
                                                              generator=torch.Generator().manual_seed(1)).images
    assert len(images) == 3 and images[0].size == (8, 8)  # PIL images by default


def test_class_conditional_meanflow_students_are_refused():
    from cmt_pipeline.export import to_pipeline
    from cmt_pipeline.utils import CMTError

    net = EDMDenoiser(build_unet((1, 8, 8), channels=(8, 16), layers_per_block=1, num_classes=10),
                      Precond(num_classes=10))
    with pytest.raises(CMTError, match="class-conditional MeanFlow"):
        to_pipeline(MeanFlowStudent(net))


def test_sample_writes_a_grid_and_an_npz(ckpts, tmp_path):
    for kind, ckpt in ckpts.items():
        png, npz = tmp_path / f"{kind}.png", tmp_path / f"{kind}.npz"
        r = CliRunner().invoke(cli, ["sample", "--ckpt", str(ckpt), "--steps", "2", "--num-samples", "9",
                                     "--out", str(png), "--npz", str(npz), "--device", "cpu"])
        assert r.exit_code == 0, r.output
        data = np.load(npz)
        assert data["samples"].shape == (9, 1, 8, 8) and data["renoise"].shape == (9, 1, 1, 8, 8)
        assert png.read_bytes()[:4] == b"\x89PNG"
        sampler = StudentSampler(load_student(str(ckpt)), student_sigmas(2))
        assert np.array_equal(sample(sampler, 9, seed=1)[0].numpy(), data["samples"])  # --seed default 1
    r = CliRunner().invoke(cli, ["sample", "--ckpt", str(ckpts["post-ect"])])
    assert r.exit_code == 2 and "nothing to write" in r.output
