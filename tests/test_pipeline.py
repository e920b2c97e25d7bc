"""`cmt pipeline` end to end through the CLI in a subprocess: every artifact, then a rerun that skips all."""

import json
import subprocess
import sys

import pytest
from PIL import Image

TINY = """
[pipeline]
out = "{out}"

[generate]
teacher = "gmm:gmm8x8"
num_samples = 96
shard_size = 32
batch_size = 32
steps = 8

[mid_train]
init = "random"
channels = [8, 16]
layers_per_block = 1
holdout = 32
steps = 6
batch_size = 2
points_per_traj = 4
ema_decay = 0.5
lr = 2e-3
eval_every = 3
checkpoint_every = 3
log_every = 1
sample_every = 0
tensorboard = false
device = "cpu"

[post_train]
data = "gmm:gmm8x8"
gmm_samples = 64
steps = 4
batch_size = 8
eval_samples = 32
eval_every = 2
keep_best = true
checkpoint_every = 4
log_every = 1
sample_every = 0
tensorboard = false
device = "cpu"

[evaluate]
num_samples = 32
seeds = 2
teacher_seeds = 1
teacher_maps = true
teacher_best_steps = 4
reference_steps = 32
cache = true
device = "cpu"
"""


def cmt(*args):
    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_pipeline_end_to_end_then_skips(tmp_path):
    run = tmp_path / "run"
    (tmp_path / "p.toml").write_text(TINY.format(out=run))
    r = cmt("pipeline", tmp_path / "p.toml", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / "trajectories" / "manifest.json").exists()
    for stage, kind in (("mid", "mid-cm"), ("post", "post-ect")):
        from cmt_pipeline.models.io import load_model

        assert load_model(run / stage / "model.ckpt", kind=kind)["step"] == (6 if stage == "mid" else 4)
        assert (run / stage / "config.json").exists() and (run / stage / "log.jsonl").exists()
    assert json.loads((run / "mid" / "config.json").read_text())["config"]["data"] == str(run / "trajectories")
    names = ["teacher", "teacher-best"] + [f"{n}-{k}step" for n in ("teacher", "mid", "post") for k in (1, 2)]
    for name in names:
        result = json.loads((run / "eval" / name / "evaluation.json").read_text())
        assert result["metrics"]["num_samples"] == 32 and "paired_mse" in result["metrics"]
        assert result["seeds"] == ([1] if name.startswith("teacher") and "step" not in name else [1, 2])  # teacher_seeds
        assert Image.open(run / "eval" / name / "samples.png").width > 0
    report = (run / "report.md").read_text()
    assert all(f"| {n} (" in report for n in names) and "MSE vs exact flow map" in report
    assert "seeds 1, 2) | 2 | " in report and " ± " in report  # the 2-step rows, with their spread
    assert "The reference is the teacher at its best: `teacher-best`, teacher heun x 4 (karras)" in report
    assert "| digits FD / teacher-best | digits FD / teacher |" in report and report.count("| 1.00x |") == 2
    assert Image.open(run / "losses.png").width > 400 and (run / "pipeline.json").exists()
    best = json.loads((run / "post" / "metrics.json").read_text())["best"]  # keep_best: the post rows score these
    for k in (1, 2):
        config = json.loads((run / "eval" / f"post-{k}step" / "evaluation.json").read_text())["config"]
        assert config["student"] == str(run / "post" / f"best-{k}step.ckpt") and best[f"{k}step"]["step"] in (2, 4)
    assert (f"held-out best (keep_best), chosen every 2 steps on its own evaluation (seed 1, 32 samples, a choose "
            f"seed): 1 step: step {best['1step']['step']} ({best['1step']['metric']} ") in report
    # every stage is complete now: a rerun skips them all and changes no checkpoint
    before = (run / "post" / "model.ckpt").read_bytes()
    r = cmt("pipeline", tmp_path / "p.toml", "--quiet")
    assert r.returncode == 0 and r.stdout.count("complete, skipped") == 11 and "running" not in r.stdout
    assert (run / "post" / "model.ckpt").read_bytes() == before
    assert (run / "report.md").read_text() == report and "mid_train " in report  # the stage times are kept
    (run / "post" / "best-2step.ckpt").unlink()  # as if post-trained before keep_best was set
    r = cmt("pipeline", tmp_path / "p.toml", "--quiet")
    assert r.returncode == 2 and "keep_best is set but" in r.stderr and "has no best-2step.ckpt" in r.stderr, r.stderr


def test_pipeline_rejects_unknown_tables(tmp_path):
    (tmp_path / "p.toml").write_text("[pretrian]\nsteps = 3\n")
    r = cmt("pipeline", tmp_path / "p.toml")
    assert r.returncode == 2 and "unknown table" in r.stderr and not (tmp_path / "runs").exists()


def test_the_teacher_is_evaluated_as_it_generated(tmp_path):
    """Guidance and the VAE of [generate] reach the evaluation of the teacher row."""
    from cmt_pipeline.pipeline import load_pipeline

    (tmp_path / "p.toml").write_text('[generate]\nteacher = "t"\nguidance_scale = 2.5\nnull_label = 9\nvae = "v"\n')
    evalc = load_pipeline(tmp_path / "p.toml")["evaluate"]
    assert (evalc.teacher, evalc.guidance_scale, evalc.null_label, evalc.vae) == ("t", 2.5, 9, "v")


def test_pipeline_refuses_a_wrong_typed_value_before_generation(tmp_path):
    run = tmp_path / "run"
    (tmp_path / "p.toml").write_text(TINY.format(out=run).replace("steps = 6", 'steps = "6"'))
    r = cmt("pipeline", tmp_path / "p.toml")
    assert r.returncode == 2 and "[mid_train]" in r.stderr and "steps = '6'" in r.stderr, r.stderr
    assert not run.exists()
