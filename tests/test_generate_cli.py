"""`cmt generate-trajectories` through the CLI: real teachers end to end, and bad input rejected cleanly."""

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from cmt_pipeline.stores import read_all


def run(*args):
    return CliRunner().invoke(cli, ["generate-trajectories", "--quiet", "--device", "cpu", *map(str, args)])


@pytest.mark.parametrize("prediction_type,num_classes", [("epsilon", 0), ("v_prediction", 0), ("epsilon", 3),
                                                         ("v_prediction", 3)])
def test_diffusers_teacher_generates_a_store(tmp_path, vp_teacher_dir, prediction_type, num_classes):
    teacher = vp_teacher_dir(prediction_type, num_classes)
    r = run("--teacher", teacher, "--num-samples", 6, "--steps", 4, "--shard-size", 4, "--out", tmp_path / "d")
    assert r.exit_code == 0, r.output
    assert "complete" in r.output and "per sample" in r.output
    data = read_all(tmp_path / "d")
    assert data["traj"].shape == (6, 4, 1, 8, 8) and np.isfinite(data["x0"].astype(np.float32)).all()
    if num_classes:
        assert set(data["labels"]) <= {0, 1, 2} and len(set(data["labels"])) > 1
    else:
        assert (data["labels"] == -1).all()
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["teacher"]["description"]["prediction_type"] == prediction_type
    assert len(manifest["teacher"]["fingerprint"]) == 64 and len(manifest["sigmas"]) == 5
    assert [s["start"] for s in manifest["shards"]] == [0, 4] and all(s["files"] for s in manifest["shards"])


def test_fixed_class_label(tmp_path, vp_teacher_dir):
    r = run("--teacher", vp_teacher_dir("epsilon", 3), "--num-samples", 3, "--steps", 2, "--class-labels", 2,
            "--out", tmp_path / "d")
    assert r.exit_code == 0, r.output
    assert (read_all(tmp_path / "d")["labels"] == 2).all()


def assert_clean_error(r, pattern):
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert pattern in lines[0], lines[0]


def test_bad_inputs_fail_cleanly_and_write_nothing(tmp_path, vp_teacher_dir):
    out = tmp_path / "out"
    cases = [
        (["--teacher", tmp_path / "nope"], "does not exist"),
        (["--teacher", tmp_path], "not a teacher folder"),
        (["--teacher", "gmm:gmm8x8", "--num-samples", 0], "--num-samples must be positive"),
        (["--teacher", "gmm:gmm8x8", "--num-samples", -3], "--num-samples must be positive"),
        (["--teacher", "gmm:gmm8x8", "--shard-size", 0], "--shard-size must be positive"),
        (["--teacher", "gmm:gmm8x8", "--class-labels", 4], "unconditional"),
        (["--teacher", vp_teacher_dir("epsilon", 3), "--class-labels", 7], "class in 0..2"),
        (["--teacher", vp_teacher_dir("epsilon", 0, out_channels=3)], "keep the shape"),
    ]
    for args, pattern in cases:
        assert_clean_error(run(*args, "--num-samples" if "--num-samples" not in args else "--seed", 4,
                               "--out", out), pattern)
        assert not out.exists(), args


def test_output_folder_with_another_dataset_is_refused_and_untouched(tmp_path):
    out = tmp_path / "d"
    assert run("--teacher", "gmm:gmm8x8", "--num-samples", 8, "--out", out).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert_clean_error(run("--teacher", "gmm:gmm8x8", "--num-samples", 8, "--seed", 5, "--out", out),
                       "holds a different dataset")
    assert_clean_error(run("--teacher", "gmm:gmm2d", "--num-samples", 8, "--out", out), "holds a different dataset")
    assert before == {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert_clean_error(run("--teacher", "gmm:gmm8x8", "--out", tmp_path / "other"), "not empty")


def test_rerun_resumes_and_reports_nothing_to_do(tmp_path):
    args = ("--teacher", "gmm:gmm8x8", "--num-samples", 8, "--out", tmp_path / "d")
    assert run(*args).exit_code == 0
    r = run(*args)
    assert r.exit_code == 0 and "nothing left to do" in r.output


def test_real_process_exit_status(tmp_path):
    p = subprocess.run([sys.executable, "-m", "cli", "generate-trajectories", "--teacher", str(tmp_path / "x"),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip().startswith("Error: teacher path")
    assert not (tmp_path / "o").exists()


def test_disk_full_mid_run_is_reported_and_resumable(tmp_path, monkeypatch):
    """ENOSPC while writing the second shard: one-line error, exit 2, the dataset is visibly incomplete (no
    manifest, readers refuse it), and rerunning the same command finishes it byte-identically to a clean run."""
    import errno

    from cmt_pipeline.stores import open_store
    from cmt_pipeline.stores.wds_store import WdsWriter
    from cmt_pipeline.errors import CMTError

    real = WdsWriter.write_shard
    calls = []

    def full_disk(self, k, arrays):
        calls.append(k)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "d" / ".tmp" / "x"))
        return real(self, k, arrays)

    args = ("--teacher", "gmm:gmm8x8", "--num-samples", 12, "--shard-size", 4, "--format", "wds")
    monkeypatch.setattr(WdsWriter, "write_shard", full_disk)
    assert_clean_error(run(*args, "--out", tmp_path / "d"), "out of disk space")
    assert not (tmp_path / "d" / "manifest.json").exists()
    with pytest.raises(CMTError, match="incomplete"):
        open_store(tmp_path / "d")
    monkeypatch.setattr(WdsWriter, "write_shard", real)
    assert run(*args, "--out", tmp_path / "d").exit_code == 0
    assert run(*args, "--out", tmp_path / "clean").exit_code == 0
    for name in ("manifest.json", "shards/shard-000001.tar", "shards/shard-000002.tar"):
        assert (tmp_path / "d" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()


def test_wrong_types_choices_and_config_keys(tmp_path):
    out = tmp_path / "out"
    for args, pattern in ((["--steps", "abc"], "Invalid value for '--steps'"),
                          (["--solver", "rk4"], "Invalid value for '--solver'"),
                          (["--num-samples", "1.5"], "Invalid value for '--num-samples'")):
        r = run("--teacher", "gmm:gmm8x8", *args, "--out", out)
        assert r.exit_code == 2 and pattern in r.stderr, r.stderr
    (tmp_path / "c.toml").write_text('[generate]\nteacher = "gmm:gmm8x8"\nnum_sample = 8\n')
    assert_clean_error(run("--config", tmp_path / "c.toml", "--out", out), "unknown GenerateConfig option(s) ['num_sample']")
    assert not out.exists()


def test_a_store_begun_by_another_solver_revision_is_not_resumed(tmp_path):
    """A store's states depend on the solvers' arithmetic at round-off: one begun before dpmpp's fused step (its
    plan has no solver_revision) is refused by name, not mixed with states computed the new way."""
    out = tmp_path / "d"
    assert run("--teacher", "gmm:gmm8x8", "--num-samples", 8, "--out", out).exit_code == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["solver_revision"] == 2
    del plan["solver_revision"]
    (out / "plan.json").write_text(json.dumps(plan))
    assert_clean_error(run("--teacher", "gmm:gmm8x8", "--num-samples", 8, "--out", out),
                       "solvers compute differently (solver revision 1, this one 2)")
