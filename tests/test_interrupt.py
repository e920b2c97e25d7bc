"""Ctrl-C and SIGTERM: one line naming the command that resumes, exit 130 / 143, nothing half-written."""

import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from cli.main import cli

GENERATE = ["generate-trajectories", "--teacher", "gmm:gmm8x8", "--num-samples", "20000", "--shard-size", "2000",
            "--batch-size", "500", "--steps", "8", "--device", "cpu", "--quiet"]


def interrupt(out, sig):
    """Run the generation in a process and send it `sig` once its first shards are done."""
    p = subprocess.Popen([sys.executable, "-m", "cli", *GENERATE, "--out", str(out)], stderr=subprocess.PIPE,
                         text=True)
    done = len(list((out / "done").glob("*"))) if (out / "done").exists() else 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and p.poll() is None and (
            not (out / "done").exists() or len(list((out / "done").glob("*"))) <= done):
        time.sleep(0.1)
    p.send_signal(sig)
    return p.wait(timeout=120), p.stderr.read()


@pytest.mark.slow
def test_ctrl_c_and_sigterm_say_how_to_resume_and_leave_only_finished_shards(tmp_path):
    out = tmp_path / "d"
    command = f"cmt {' '.join(GENERATE)} --out {out}"
    rc, err = interrupt(out, signal.SIGINT)
    assert rc == 130 and err.strip().splitlines() == [
        f"interrupted; rerun the same command to resume (finished parts are kept): {command}"], err
    rc, err = interrupt(out, signal.SIGTERM)  # the rerun resumes, and is stopped again
    assert rc == 143 and err.strip().splitlines() == [
        f"terminated; rerun the same command to resume (finished parts are kept): {command}"], err
    r = subprocess.run([sys.executable, "-m", "cli", "verify", str(out), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 1 and " 0 corrupt of 10 shards" in r.stdout, r.stdout  # incomplete; what is there is intact
    assert not [p for p in out.rglob("*") if ".tmp" in p.name and p.is_file()]


def test_an_interrupted_training_command_names_its_resume_option(monkeypatch):
    import cmt_pipeline.training.midtrain as midtrain

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(midtrain, "mid_train", stopped)
    r = CliRunner().invoke(cli, ["mid-train", "--data", "runs/traj", "--out", "runs/mid"])
    assert r.exit_code == 130 and r.output.strip() == ("interrupted; continue from the last checkpoint with: "
                                                       "cmt mid-train --data runs/traj --out runs/mid --resume latest")
