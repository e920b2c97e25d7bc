"""Ctrl-C and SIGTERM: one line naming the command that resumes, exit 130 / 143, nothing half-written."""

import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from cli.main import cli
from cmt_pipeline.generation.run import PAUSE_VARIABLE

GENERATE = ["generate-trajectories", "--teacher", "gmm:gmm8x8", "--num-samples", "20000", "--shard-size", "2000",
            "--batch-size", "500", "--steps", "8", "--device", "cpu", "--quiet"]


def done(out):
    return len(list((out / "done").glob("*"))) if (out / "done").exists() else 0


def interrupt(out, sig):
    """Run the generation in a process that holds still after its second shard (generation's test hook), and send
    it `sig` once those two shards are committed: the signal lands mid-run however loaded the machine is (it once
    finished all 20000 samples before a timed poll saw a shard)."""
    p = subprocess.Popen([sys.executable, "-m", "cli", *GENERATE, "--out", str(out)], stderr=subprocess.PIPE,
                         text=True, env={**os.environ, PAUSE_VARIABLE: "2", "PYTHONFAULTHANDLER": "1"},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # SIGINT as a terminal delivers it: a test runner started in the background (`cmd &` in a script) passes SIGINT
    # on ignored, Python then installs no KeyboardInterrupt handler, and the run held still forever
    before, hung = done(out), time.monotonic() + 900  # a guard against a hang, not a race: nothing else ends it
    while done(out) < before + 2:
        assert p.poll() is None and time.monotonic() < hung, p.stderr.read()  # it holds after two shards
        time.sleep(0.05)
    p.send_signal(sig)
    try:
        return p.wait(timeout=600), p.stderr.read()  # a hang guard: it once outlasted 120 s at load 6
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack: where it hangs
        pytest.fail(f"no exit 600 s after {sig!r}; its threads:\n{p.communicate()[1][-6000:]}")


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
