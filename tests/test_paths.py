"""A store, a run folder or a trainer checkpoint passed where a model belongs: one line that says what the path is
and which model to pass instead (paths.not_a_model, used by every loader)."""

import pytest
from click.testing import CliRunner

from cli.main import cli
from cmt_pipeline.config import GenerateConfig, MidTrainConfig
from cmt_pipeline.generation import generate
from cmt_pipeline.training.midtrain import mid_train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny mid-training run beside the store it trained on."""
    root = tmp_path_factory.mktemp("paths")
    generate(GenerateConfig(teacher="gmm:gmm8x8", num_samples=16, shard_size=8, batch_size=8, steps=4, device="cpu",
                            out=str(root / "traj")), progress=False)
    mid_train(MidTrainConfig(data=str(root / "traj"), out=str(root / "run"), init="random", holdout=4, steps=2,
                             batch_size=2, channels=[8, 16], layers_per_block=1, eval_samples=4, checkpoint_every=1,
                             sample_every=0, log_every=1, tensorboard=False, device="cpu"), progress=False)
    return root


def one_line_error(*args):
    r = CliRunner().invoke(cli, [*map(str, args)])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    return r.output


@pytest.mark.slow
def test_trainer_checkpoints_and_run_folders_name_the_model(run):
    ckpt, ckpts = run / "run" / "model.ckpt", run / "run" / "checkpoints"
    assert (f"{ckpts / 'latest'} is the pointer to a run's newest trainer checkpoint (for --resume latest), not a "
            f"model; use {ckpt}") in one_line_error("inspect", ckpts / "latest")
    assert (f"{ckpts / 'step-0000002'} is a trainer checkpoint (for --resume), not a model; use {ckpt}"
            in one_line_error("inspect", ckpts / "step-0000002"))
    assert f"is a training run folder, not a model; use {ckpt}" in one_line_error("sample", "--ckpt", run / "run",
                                                                                   "--out", run / "x.png")
    assert f"use {ckpt}" in one_line_error("evaluate", "--student", ckpts / "step-0000002", "--out", run / "e")
    assert f"use {ckpt}" in one_line_error("post-train", "--init", run / "run", "--data", "gmm:gmm8x8",
                                           "--out", run / "post")
    assert not (run / "x.png").exists() and not (run / "e").exists() and not (run / "post").exists()


@pytest.mark.slow
def test_a_store_given_as_a_model_says_so(run):
    out = one_line_error("post-train", "--init", run / "traj", "--data", "gmm:gmm8x8", "--out", run / "post")
    assert "is a trajectory store (for mid-train --data, evaluate --store), not a model" in out


def test_a_missing_student_checkpoint_is_not_called_a_teacher(tmp_path):
    out = one_line_error("sample", "--ckpt", tmp_path / "nope" / "model.ckpt", "--out", tmp_path / "x.png")
    assert "checkpoint" in out and "does not exist" in out and "teacher" not in out
