"""`cmt sample` and `cmt export`: an exported folder loads with diffusers alone (a fresh virtual environment holding
only torch, diffusers and safetensors) and reproduces `cmt sample`'s 1- and 2-step samples bit for bit, for every
kind of student; cmt accepts the folder wherever it takes a student; export never replaces a folder it did not write."""

import json
import os
import re
import subprocess
import venv

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from cmt_pipeline.latents import LatentCodec
from cmt_pipeline.models import MeanFlowStudent, consistency_student
from cmt_pipeline.sampling import StudentSampler, load_student, sample, student_sigmas
from cmt_pipeline.teachers import EDMDenoiser, GMMDenoiser, Precond, build_unet
from cmt_pipeline.models.io import save_model
from cmt_pipeline.errors import CMTError

KINDS = ("cm", "cm-classes", "mf", "mf-classes", "cm-latent")

# Runs in the diffusers-only environment: argv = folder, then student names; writes folder/fresh.npz.
FRESH = """
import sys, numpy as np, torch
torch.set_num_threads(1)
try:
    import cmt_pipeline
    sys.exit("cmt_pipeline is importable in the diffusers-only environment")
except ImportError:
    pass
from diffusers import DiffusionPipeline
out = {}
for name in sys.argv[2:]:
    pipe = DiffusionPipeline.from_pretrained(sys.argv[1] + "/" + name, trust_remote_code=True)
    for steps in (1, 2):
        ref = np.load(sys.argv[1] + f"/{name}-{steps}.npz")
        labels = torch.from_numpy(ref["labels"]) if pipe.config.num_classes else None
        renoise = torch.from_numpy(ref["renoise"]) if steps == 2 else None
        out[f"{name}-{steps}"] = pipe(latents=torch.from_numpy(ref["prior"]), renoise=renoise, class_labels=labels,
                                      num_inference_steps=steps, output_type="pt").images.numpy()
        if steps == 2:  # the names of earlier versions still work
            again = pipe(noise=torch.from_numpy(ref["prior"]), renoise=renoise, class_labels=labels, steps=2,
                         output_type="pt", return_dict=False)[0].numpy()
            assert np.array_equal(again, out[f"{name}-{steps}"])
np.savez(sys.argv[1] + "/fresh.npz", **out)
"""


def cmt(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def diffusers_only(tmp_path_factory):
    """The python of a new virtual environment with torch, diffusers and safetensors only (about 45 s to make)."""
    root = tmp_path_factory.mktemp("venv") / "env"
    venv.create(root, with_pip=True)
    py = root / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "-q", "torch==2.13.0", "diffusers", "safetensors"], check=True,
                   timeout=600, capture_output=True)
    return py


def student(kind, shape=(1, 8, 8)):
    torch.manual_seed(0)
    classes = 3 if kind.endswith("classes") else 0
    net = EDMDenoiser(build_unet(shape, channels=(8, 16), layers_per_block=1, num_classes=classes),
                      Precond(num_classes=classes))
    if kind.startswith("cm"):
        return consistency_student(net)
    mf = MeanFlowStudent(net)
    torch.nn.init.normal_(mf.gap_embeddings[0].linear_2.weight, std=0.2)  # so a dropped gap would show
    return mf


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A model.ckpt of each kind; the latent one records a tiny per-channel-scaled AutoencoderKL."""
    from diffusers import AutoencoderKL

    root = tmp_path_factory.mktemp("students")
    torch.manual_seed(1)
    AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                  latent_channels=4, norm_num_groups=4, sample_size=8, scaling_factor=0.5,
                  latents_mean=(0.1, -0.2, 0.0, 0.3), latents_std=(1.5, 0.7, 1.0, 2.0)).save_pretrained(root / "vae")
    paths = {}
    for kind in KINDS:
        latent = kind.endswith("latent")
        m = student(kind, (4, 4, 4) if latent else (1, 8, 8)).eval()
        data = {"teacher": "builtin", "teacher_fingerprint": "ab" * 32, "store": "runs/traj", "fingerprint": "cd" * 32,
                **({"vae": LatentCodec.load(root / "vae").describe((4, 4, 4))} if latent else {})}
        paths[kind] = root / kind / "model.ckpt"
        paths[kind].parent.mkdir()
        save_model(paths[kind], kind=f"mid-{kind[:2]}", model=m, ema_model=m, step=7, config={"steps": 7}, data=data)
    (root / "cm" / "metrics.json").write_text(json.dumps({"fd_1step": 1.5, "eval_samples": 100, "eval_seed": 0}))
    return paths


@pytest.fixture(scope="module")
def exported(ckpts, tmp_path_factory):
    root = tmp_path_factory.mktemp("exported")
    for kind, ckpt in ckpts.items():
        r = cmt("export", "--ckpt", ckpt, "--out", root / kind)
        assert r.exit_code == 0, r.output
    return root


@pytest.mark.slow
def test_exported_folders_sample_with_diffusers_alone_bit_for_bit(ckpts, exported, diffusers_only):
    for kind, ckpt in ckpts.items():
        for steps in (1, 2):
            # one thread, as in FRESH: a CPU kernel may round differently with another thread count
            r = cmt("sample", "--ckpt", ckpt, "--steps", steps, "--num-samples", 12, "--seed", 3, "--device", "cpu",
                    "--num-threads", 1, "--npz", exported / f"{kind}-{steps}.npz")
            assert r.exit_code == 0, r.output
    env = {**os.environ, "HF_HOME": str(exported / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    subprocess.run([diffusers_only, "-c", FRESH, exported, *KINDS], check=True, timeout=300, env=env,
                   cwd=exported)  # not the repository root, whose cmt_pipeline/ would be importable from there
    fresh = np.load(exported / "fresh.npz")
    for kind in KINDS:
        refs = [np.load(exported / f"{kind}-{steps}.npz")["samples"] for steps in (1, 2)]
        for steps, ref in zip((1, 2), refs):
            assert np.array_equal(fresh[f"{kind}-{steps}"], ref), (kind, steps)
        assert not np.array_equal(*refs)
    assert fresh["cm-latent-1"].shape == (12, 1, 8, 8)  # decoded by the folder's vae/


def test_exported_folder_layout_and_model_card(exported):
    index = json.loads((exported / "mf-classes" / "model_index.json").read_text())
    assert index["_class_name"] == ["few_step_pipeline", "FewStepPipeline"]
    assert index["gap_embedding"] == ["few_step_pipeline", "GapEmbedding"] and index["num_classes"] == 3
    assert index["parametrisation"] == "meanflow" and index["sigma_max"] == 80.0
    assert index["vae"] == [None, None] and (exported / "cm-latent" / "vae" / "config.json").is_file()
    code = (exported / "cm" / "few_step_pipeline.py").read_text()
    assert set(re.findall(r"^(?:from|import) (\w+)", code, re.M)) == {"__future__", "torch", "diffusers"}
    card = (exported / "cm" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers\npipeline_tag: unconditional-image-generation\ntags:\n")
    assert "ab" * 32 in card and "cd" * 32 in card and '"fd_1step": 1.5' in card and "cmt export --ckpt" in card


@pytest.mark.slow
def test_inspect_sample_and_evaluate_accept_an_exported_folder(ckpts, exported, tmp_path):
    r = cmt("inspect", exported / "mf-classes")
    assert r.exit_code == 0 and "FewStepPipeline" in r.output and "meanflow" in r.output, r.output
    for kind in ("mf-classes", "cm-latent"):
        a, b = tmp_path / f"{kind}-ckpt.npz", tmp_path / f"{kind}-folder.npz"
        for src, npz in ((ckpts[kind], a), (exported / kind, b)):
            r = cmt("sample", "--ckpt", src, "--steps", 2, "--num-samples", 5, "--device", "cpu", "--npz", npz)
            assert r.exit_code == 0, r.output
        assert np.array_equal(np.load(a)["samples"], np.load(b)["samples"])
    r = cmt("evaluate", "--student", exported / "cm-latent", "--num-samples", 8, "--device", "cpu", "--quiet",
            "--out", tmp_path / "eval")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["vae"]["latent_channels"] == 4


def test_export_never_replaces_a_folder_it_did_not_write(ckpts, tmp_path):
    run = ckpts["cm"].parent
    before = sorted(p.name for p in run.iterdir())
    for extra in ([], ["--overwrite"]):
        r = cmt("export", "--ckpt", ckpts["cm"], "--out", run, *extra)
        assert r.exit_code == 2 and "not a previous export" in r.output and "choose another --out" in r.output
        assert sorted(p.name for p in run.iterdir()) == before
    out = tmp_path / "out"
    assert cmt("export", "--ckpt", ckpts["cm"], "--out", out).exit_code == 0
    r = cmt("export", "--ckpt", ckpts["mf"], "--out", out)
    assert r.exit_code == 2 and "--overwrite" in r.output
    assert cmt("export", "--ckpt", ckpts["mf"], "--out", out, "--overwrite").exit_code == 0
    assert json.loads((out / "model_index.json").read_text())["parametrisation"] == "meanflow"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # nothing left aside


def test_students_of_other_networks_are_refused_in_one_line():
    from cmt_pipeline.export import to_pipeline

    with pytest.raises(CMTError, match="EDM networks only"):
        to_pipeline(consistency_student(GMMDenoiser(torch.zeros(2, 2), torch.ones(2), torch.ones(2) / 2, (2, 1, 1))))


def test_sample_writes_a_grid_and_an_npz(ckpts, tmp_path):
    for kind in ("cm", "mf"):
        ckpt = ckpts[kind]
        png, npz = tmp_path / f"{kind}.png", tmp_path / f"{kind}.npz"
        r = cmt("sample", "--ckpt", ckpt, "--steps", 2, "--num-samples", 9, "--out", png, "--npz", npz,
                "--device", "cpu")
        assert r.exit_code == 0, r.output
        data = np.load(npz)
        assert data["samples"].shape == (9, 1, 8, 8) and data["renoise"].shape == (9, 1, 1, 8, 8)
        assert png.read_bytes()[:4] == b"\x89PNG"
        sampler = StudentSampler(load_student(str(ckpt)), student_sigmas(2))
        assert np.array_equal(sample(sampler, 9, seed=1)[0].numpy(), data["samples"])  # --seed default 1
    r = cmt("sample", "--ckpt", ckpts["cm"])
    assert r.exit_code == 2 and "nothing to write" in r.output


@pytest.mark.parametrize("command", ["export", "sample"])
@pytest.mark.parametrize("sigmas", [["--sigma-max", "nan"], ["--sigma-mid", "-3"], ["--sigma-max", "inf"],
                                    ["--sigma-mid", "nan"]])
def test_sampling_noise_levels_are_checked_before_anything_is_written(tmp_path, command, sigmas):
    """export wrote NaN into model_index.json (the pipeline then drew black images); sample took inf."""
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"")
    out = tmp_path / ("o" if command == "export" else "o.png")
    r = CliRunner().invoke(cli, [command, "--ckpt", str(ckpt), "--out", str(out), *sigmas])
    assert r.exit_code == 2 and "need finite 0 < --sigma-mid < --sigma-max" in r.output, r.output
    assert not out.exists()


@pytest.mark.parametrize("options, phrase", [(["--class-labels", "3"], "but the generator is unconditional"),
                                             (["--num-samples", "2147483647"], "--num-samples 2147483647 needs about")])
def test_sample_checks_labels_and_size_before_sampling(tmp_path, options, phrase):
    """An unconditional student took --class-labels 3 (generate refused it); 2**31 samples allocated first."""
    r = CliRunner().invoke(cli, ["sample", "--ckpt", "gmm:gmm8x8", "--out", str(tmp_path / "s.png"), "--device", "cpu",
                                 *options])
    assert r.exit_code == 2 and phrase in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "s.png").exists()
