"""Nothing on disk runs code: a pickle payload (or Python code) planted in any file the training and model side reads
back (a trainer checkpoint's files, including the names accelerate used to write, model.ckpt, an exported folder, a
teacher folder, a run's records, a TOML config) never runs; the command refuses it with one line and exit 2, or
ignores the file."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli

pytestmark = pytest.mark.slow

TINY = ["--channels", "8,16", "--layers-per-block", "1", "--batch-size", "16", "--sample-steps", "2", "--steps", 3,
        "--checkpoint-every", 2, "--num-grid-samples", 4, "--device", "cpu", "--no-tensorboard", "--quiet"]
# the files of a trainer checkpoint, now and as accelerate wrote them (custom_checkpoint_*.pkl: EMA and step)
CHECKPOINT_FILES = ["state.json", "model.safetensors", "ema.safetensors", "optimizer.pt", "custom_checkpoint_0.pkl",
                    "custom_checkpoint_1.pkl", "random_states_0.pkl", "optimizer.bin", "scaler.pt",
                    "pytorch_model.bin"]


class Payload:
    """Unpickling it writes the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def cmt(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def plant(path, marker):
    """Replace `path` by a torch.save pickle whose loading runs the payload (a .py file: code that would)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".py":
        path.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    else:
        with open(path, "wb") as f:
            torch.save({"step": Payload(marker), "state": Payload(marker)}, f)


def refused_or_ignored(r, marker):
    assert not marker.exists(), "the planted payload ran"
    out = r.output.strip()
    if r.exit_code != 0:
        assert r.exit_code == 2 and out.startswith("Error: ") and "\n" not in out, (r.exit_code, out[-2000:])


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A finished pretrain run and its export."""
    root = tmp_path_factory.mktemp("untrusted")
    r = cmt("pretrain", "--out", root / "run", *TINY)
    assert r.exit_code == 0, r.output
    r = cmt("export", "--ckpt", root / "run" / "model.ckpt", "--out", root / "export")
    assert r.exit_code == 0, r.output
    return root


def copy_run(made, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(made / "run", run)
    return run


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_payload_in_a_trainer_checkpoint_never_runs_on_resume(made, tmp_path, name):
    run, marker = copy_run(made, tmp_path), tmp_path / "ran"
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    plant(latest / name, marker)
    refused_or_ignored(cmt("pretrain", "--out", run, *TINY, "--resume", "latest"), marker)
    refused_or_ignored(cmt("pretrain", "--out", run, *TINY, "--resume", latest), marker)


@pytest.mark.parametrize("name", ["config.json", "log.jsonl", "checkpoints/latest", ".lock"])
def test_a_payload_in_a_run_record_never_runs(made, tmp_path, name):
    run, marker = copy_run(made, tmp_path), tmp_path / "ran"
    plant(run / name, marker)
    refused_or_ignored(cmt("pretrain", "--out", run, *TINY, "--resume", "latest"), marker)
    refused_or_ignored(cmt("pretrain", "--out", run, *TINY), marker)


def test_a_payload_model_ckpt_never_runs(made, tmp_path):
    ckpt, marker = tmp_path / "model.ckpt", tmp_path / "ran"
    plant(ckpt, marker)
    for args in (["sample", "--ckpt", ckpt, "--out", tmp_path / "g.png", "--device", "cpu"],
                 ["export", "--ckpt", ckpt, "--out", tmp_path / "e"], ["inspect", ckpt],
                 ["evaluate", "--student", ckpt, "--num-samples", 8, "--device", "cpu", "--out", tmp_path / "ev"]):
        r = cmt(*args)
        refused_or_ignored(r, marker)
        assert r.exit_code == 2, args


@pytest.mark.parametrize("folder", ["export", "run/teacher"])
def test_a_payload_in_a_model_folder_never_runs(made, tmp_path, folder):
    """Each file of an exported folder (its own few_step_pipeline.py included) and of a teacher folder in turn;
    and a pickled .bin in place of the safetensors weights."""
    files = sorted(p.relative_to(made / folder) for p in (made / folder).rglob("*") if p.is_file())
    weights = [p.with_suffix(".bin") for p in files if p.suffix == ".safetensors"]
    assert len(files) >= 3 and weights
    for i, name in enumerate(files + weights):
        model, marker = tmp_path / str(i), tmp_path / f"ran-{i}"
        shutil.copytree(made / folder, model)
        if name in weights:
            (model / name).with_suffix(".safetensors").unlink()
        plant(model / name, marker)
        for args in (["sample", "--ckpt", model, "--out", tmp_path / "g.png", "--num-samples", 4, "--device", "cpu"],
                     ["inspect", model]):
            refused_or_ignored(cmt(*args), marker)


def test_a_payload_config_file_never_runs(tmp_path):
    toml, marker = tmp_path / "c.toml", tmp_path / "ran"
    plant(toml, marker)
    r = cmt("pretrain", "--config", toml, "--out", tmp_path / "run", *TINY)
    refused_or_ignored(r, marker)
    assert r.exit_code == 2


def test_a_folder_naming_a_pipeline_as_its_model_is_refused(vp_teacher_dir, tmp_path):
    """A config.json picks only a diffusers model class, never a pipeline (whose loading may run a folder's code)."""
    folder, marker = tmp_path / "teacher", tmp_path / "ran"
    shutil.copytree(vp_teacher_dir(), folder)
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "_class_name": "DiffusionPipeline"}))
    r = cmt("inspect", folder)
    refused_or_ignored(r, marker)
    assert r.exit_code == 2 and "no model class 'DiffusionPipeline'" in r.output, r.output


@pytest.mark.parametrize("command", [["inspect"], ["sample", "--ckpt"], ["evaluate", "--student"],
                                     ["export", "--ckpt"]])
def test_a_zero_byte_checkpoint_is_refused_in_one_line(tmp_path, command):
    """torch raises EOFError with an empty message there; quoting its first line raised IndexError."""
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"")
    r = CliRunner().invoke(cli, [*command, str(ckpt), "--out", str(tmp_path / "o")] if command[0] != "inspect"
                           else [*command, str(ckpt)])
    assert r.exit_code != 0 and "cannot read checkpoint" in r.output and "EOFError" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", [["generate-trajectories", "--teacher", "gmm:gmm2d", "--num-samples", "4"],
                                     ["sample", "--ckpt", "gmm:gmm2d"], ["evaluate", "--student", "gmm:gmm2d"]])
def test_an_unknown_device_is_refused_in_one_line(tmp_path, command):
    r = CliRunner().invoke(cli, [*command, "--device", "banana", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and r.output.strip().splitlines() == [
        "Error: --device banana is not a device; use auto, cpu, cuda or cuda:N"], r.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("channels", ["13,7", "100000,200000", "1,2"])
def test_unet_widths_are_checked_before_the_network_is_built(tmp_path, channels):
    """13,7 raised GroupNorm's ValueError; 100000,200000 tried to allocate 160 GB."""
    r = CliRunner().invoke(cli, ["post-train", "--data", "gmm:gmm2d", "--init", "random", "--channels", channels,
                                 "--steps", "1", "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert r.exit_code == 2 and f"--channels {channels}: each width must be in 2..2048" in r.output, r.output
    assert not (tmp_path / "o").exists()


def test_loading_a_model_folder_prints_no_library_notices(vp_teacher_dir, tmp_path):
    """diffusers logged "An error occurred while trying to fetch ..." and "Defaulting to unsafe serialization"
    (misleading: it reads a .bin with weights_only) on stderr, above a refusal's one line and around a good
    folder's output."""
    import subprocess
    import sys

    def run(*args):
        r = subprocess.run([sys.executable, "-m", "cli", *map(str, args)], capture_output=True, text=True)
        return r.returncode, (r.stdout + r.stderr).strip().splitlines()

    from diffusers import UNet2DModel

    plain, payload, marker = tmp_path / "plain", tmp_path / "payload", tmp_path / "ran"
    shutil.copytree(vp_teacher_dir(), plain)
    UNet2DModel.from_pretrained(plain / "unet").save_pretrained(plain / "unet", safe_serialization=False)
    (plain / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.copytree(plain, payload)
    plant(payload / "unet" / "diffusion_pytorch_model.bin", marker)
    code, lines = run("inspect", plain)
    assert code == 0 and lines[0].split() == ["type", "network", "folder", "(DiffusersDenoiser)"], lines
    assert not [line for line in lines if "serialization" in line or "error occurred" in line], lines
    for args in (["inspect", payload], ["generate-trajectories", "--teacher", payload, "--num-samples", 4,
                                        "--device", "cpu", "--out", tmp_path / "out"]):
        code, lines = run(*args)
        assert code == 2 and len(lines) == 1 and lines[0].startswith("Error: could not load"), lines
    assert not marker.exists()
