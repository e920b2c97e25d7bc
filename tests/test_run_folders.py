"""Run folders belong to what made them: no command writes over a run, a store or unrelated files; one trainer per
run folder (a lock, with a dead trainer's recognised); a full disk, a read-only folder, a torn log line or a long
name gives one line and a state that resumes exactly; SIGKILL at random moments, then resuming, gives the
uninterrupted run."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from cmt_pipeline.models.io import load_model
from cmt_pipeline.training import checkpoint
from cmt_pipeline.training.loop import PAUSE_VARIABLE

TINY = ["--channels", "8,16", "--layers-per-block", "1", "--batch-size", "16", "--sample-steps", "2",
        "--num-grid-samples", 4, "--sample-every", 0, "--device", "cpu", "--no-tensorboard", "--quiet"]
RUN6 = [*TINY, "--steps", 6, "--checkpoint-every", 2, "--log-every", 1]


def cmt(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(r, *phrases):
    out = r.output.strip()
    assert r.exit_code == 2 and out.startswith("Error: ") and "\n" not in out, (r.exit_code, out[-3000:])
    assert all(p in out for p in phrases), out


def tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def losses(run: Path) -> dict:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())}


def assert_same_run(a: Path, b: Path):
    """Identical losses, weights and EMA weights."""
    assert losses(a) == losses(b)
    ca, cb = load_model(a / "model.ckpt"), load_model(b / "model.ckpt")
    for key in ("state_dict", "ema_state_dict"):
        assert all(torch.equal(ca[key][k], cb[key][k]) for k in ca[key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 6-step run."""
    out = tmp_path_factory.mktemp("ref") / "run"
    r = cmt("pretrain", "--out", out, *RUN6)
    assert r.exit_code == 0, r.output
    return out


# ---- nothing is written over what another command made -------------------------------------------------------

@pytest.mark.slow
def test_no_command_writes_over_a_run_or_unrelated_files(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "model_index.json").write_text(json.dumps({"_class_name": ["few_step_pipeline", "FewStepPipeline"]}))
    before = tree(run)
    for args in (["export", "--ckpt", run / "model.ckpt", "--out", run, "--overwrite"],  # it looks like an export
                 ["sample", "--ckpt", run / "model.ckpt", "--npz", run / "model.ckpt", "--overwrite"],
                 ["sample", "--ckpt", run / "model.ckpt", "--out", run / "config.json"],
                 ["train-classifier", "--out", run, "--epochs", 1]):
        one_line_error(cmt(*args))
    (tmp_path / "pipe.toml").write_text("[mid_train]\nsteps = 1\n")
    one_line_error(cmt("pipeline", tmp_path / "pipe.toml", "--out", run), "not a pipeline run")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "student").mkdir()
    (mine / "student" / "notes.txt").write_text("mine")
    one_line_error(cmt("pretrain", "--out", mine, *TINY, "--steps", 1), "not a training run")
    assert tree(run) == before and tree(mine) == {"student/notes.txt": b"mine"}
    # what the commands made themselves they replace when asked to
    png = tmp_path / "g.png"
    assert cmt("sample", "--ckpt", run / "model.ckpt", "--out", png, "--num-samples", 4).exit_code == 0
    one_line_error(cmt("sample", "--ckpt", run / "model.ckpt", "--out", png, "--num-samples", 4), "--overwrite")
    assert cmt("sample", "--ckpt", run / "model.ckpt", "--out", png, "--num-samples", 4, "--overwrite").exit_code == 0


# ---- one trainer per run folder -------------------------------------------------------------------------------

def start(out: Path, *args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli", "pretrain", "--out", str(out), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def wait_for(cond, p: subprocess.Popen, timeout=900):  # the clock: a guard against a hang, not a race
    deadline = time.monotonic() + timeout
    while not cond():
        assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.poll() is not None else "timeout"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_second_trainer_on_a_running_run_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    first = start(out, *TINY, "--steps", 100000, "--checkpoint-every", 1000)
    try:
        wait_for(lambda: (out / ".lock").is_file() and (out / ".lock").read_text(), first)
        second = subprocess.run([sys.executable, "-m", "cli", "pretrain", "--out", str(out), *map(str, TINY),
                                 "--steps", "100000", "--checkpoint-every", "1000"], capture_output=True, text=True,
                                timeout=300)
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1, second.stderr[-3000:]
        assert lines[0].startswith(f"Error: {out} is in use by another trainer (pid {first.pid} on host ")
        assert first.poll() is None  # the first runs on
    finally:
        first.kill()
        first.wait()


def logged_step(run: Path) -> int:
    """The last step in a run's log as it is being written (0 when none yet)."""
    try:
        return max([json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()[:-1]] or [0])
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_run(tmp_path):
    """Four attempts killed (kill -9) at random steps, each rerun with --resume latest (without, before the first
    checkpoint), then one left to finish: the losses, weights and EMA are those of an uninterrupted run, and every
    rerun after a kill that left a held lock behind says it takes the dead trainer's lock over."""
    args = [*TINY, "--steps", 40, "--checkpoint-every", 5, "--log-every", 1, "--num-threads", 1]  # as bitwise
    assert cmt("pretrain", "--out", tmp_path / "reference", *args).exit_code == 0
    rng, out, takeovers = random.Random(0), tmp_path / "run", 0
    targets = sorted(rng.sample(range(1, 37), 4))  # kill once the log reaches these steps (at once if it has)
    for attempt in range(5):
        latest = out / "checkpoints" / "latest"
        start_step = int(latest.read_text()[5:]) if latest.exists() else 0
        stale = (out / ".lock").read_text() if (out / ".lock").is_file() else ""
        # a killed attempt holds after step target + 2 (the training loop's test hook), so the kill lands somewhere
        # in the steps after the target however fast the machine is, never after the run has ended
        env = {PAUSE_VARIABLE: str(targets[attempt] + 2)} if attempt < 4 else {}
        p = start(out, *args, *(["--resume", "latest"] if start_step else []), env=env)
        if attempt < 4:
            wait_for(lambda: logged_step(out) >= targets[attempt], p)
            time.sleep(rng.uniform(0, 0.05))
            p.kill()
        rc, err = p.wait(timeout=300), p.stderr.read()
        assert rc == (0 if attempt == 4 else -9), err
        took_lock = rc == 0 or (out / ".lock").is_file() and f'"pid": {p.pid},' in (out / ".lock").read_text()
        if stale and took_lock:  # (a kill before it reached the lock leaves the stale one for the next attempt)
            assert "taking it over" in err and f"pid {json.loads(stale)['pid']}" in err, err
            takeovers += 1
    assert takeovers and not (out / ".lock").exists()
    assert_same_run(tmp_path / "reference", out)


# ---- full disk, read-only folder, torn log, long names ---------------------------------------------------------

@pytest.mark.parametrize("code, phrase", [(errno.ENOSPC, "out of disk space"), (errno.EROFS, "read-only"),
                                          (errno.EACCES, "not writable")])
def test_a_failed_checkpoint_write_is_one_line_and_resumes_exactly(reference, tmp_path, monkeypatch, code, phrase):
    real = checkpoint.write_state

    def failing(folder, *args):
        if folder.name.endswith("step-0000004"):
            raise OSError(code, os.strerror(code), str(folder / "model.safetensors"))
        return real(folder, *args)

    monkeypatch.setattr(checkpoint, "write_state", failing)
    out = tmp_path / "run"
    one_line_error(cmt("pretrain", "--out", out, *RUN6), phrase, "--resume latest")
    monkeypatch.setattr(checkpoint, "write_state", real)
    assert cmt("pretrain", "--out", out, *RUN6, "--resume", "latest").exit_code == 0
    assert_same_run(reference, out)


def test_a_torn_last_log_line_does_not_block_resume(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "checkpoints" / "latest").write_text("step-0000004\n")
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 7, "lo')  # a write cut short by a crash
    r = cmt("pretrain", "--out", out, *RUN6, "--resume", "latest")
    assert r.exit_code == 0 and "dropped 1 unreadable line" in r.output, r.output
    assert_same_run(reference, out)


def test_long_output_names(reference, tmp_path):
    """A name the file system takes works (the temporary name stays short); a longer one is one line."""
    ckpt = reference / "model.ckpt"
    assert cmt("export", "--ckpt", ckpt, "--out", tmp_path / ("e" * 250)).exit_code == 0
    assert cmt("sample", "--ckpt", ckpt, "--out", tmp_path / ("s" * 246 + ".png"), "--num-samples", 4).exit_code == 0
    one_line_error(cmt("sample", "--ckpt", ckpt, "--out", tmp_path / ("s" * 300 + ".png"), "--num-samples", 4),
                   "too long")
