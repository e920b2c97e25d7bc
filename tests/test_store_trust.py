"""Stores trust nothing on disk (issue 14): non-finite data, racing plan claims, foreign shards, edited manifests,
stale repairs and older store formats each give one line, never wrong data or a traceback."""

import json
import multiprocessing
import shutil
import threading

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from cmt_pipeline.config import GenerateConfig
from cmt_pipeline.generation import generate
from cmt_pipeline.stores import open_store, repair, verify
from cmt_pipeline.stores.layout import MANIFEST, PLAN, STORE_VERSION, claim_plan, marker_path, plan_fingerprint
from cmt_pipeline.training.trajectories import trajectory_source
from cmt_pipeline.errors import CMTError
from conftest import copier

GMM = dict(teacher="gmm:gmm8x8", num_samples=48, shard_size=16, batch_size=16, steps=4, device="cpu")


def gen(out, fmt="wds", **kw):
    return generate(GenerateConfig(**{**GMM, "format": fmt, "out": str(out), **kw}), progress=False)


def cmd(*args):
    return CliRunner().invoke(cli, [*map(str, args)])


def one_line_error(r, *patterns):
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    for p in patterns:
        assert p in lines[0], r.output


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Finished 48-sample stores per format (3 shards of 16): `a` seed 0 and `b` seed 7 (another dataset)."""
    base = tmp_path_factory.mktemp("trust")
    for fmt in ("wds", "zarr"):
        gen(base / f"a-{fmt}", fmt)
        gen(base / f"b-{fmt}", fmt, seed=7)
    return base


@pytest.fixture
def copy(stores, tmp_path):
    return copier(stores, tmp_path)


@pytest.fixture(scope="module")
def nan_teacher(vp_teacher_dir, tmp_path_factory):
    """A diffusers teacher folder whose weights are all NaN."""
    from diffusers import UNet2DModel

    src, out = vp_teacher_dir(), tmp_path_factory.mktemp("nan-teacher")
    unet = UNet2DModel.from_pretrained(src / "unet")
    with torch.no_grad():
        for p in unet.parameters():
            p.fill_(float("nan"))
    unet.save_pretrained(out / "unet")
    shutil.copytree(src / "scheduler", out / "scheduler")
    return out


@pytest.mark.parametrize("fmt", ["wds", "zarr"])
def test_nonfinite_teacher_output_is_refused_naming_samples_or_stored_on_request(tmp_path, nan_teacher, fmt):
    out = tmp_path / "s"
    base = ["generate-trajectories", "--quiet", "--teacher", nan_teacher, "--num-samples", 8, "--shard-size", 4,
            "--batch-size", 4, "--steps", 2, "--device", "cpu", "--format", fmt, "--out", out]
    one_line_error(cmd(*base), "NaN or inf in 4 sample(s) (0, 1, 2, 3) of shard 0", "--allow-nonfinite")
    assert not (out / "done").exists()
    # stored on request (in zarr an all-NaN shard equals the fill value and must still be written) ...
    assert cmd(*base, "--allow-nonfinite").exit_code == 0
    r = cmd("verify", "--quiet", out)
    assert r.exit_code == 1 and "shard 0 (samples 0..3): corrupt: holds NaN or inf in 4 sample(s)" in r.output
    # ... and refused by every reader
    with pytest.raises(CMTError, match="holds NaN or inf values in"):
        next(trajectory_source(out, 4, holdout=0)[0].batches(0))


def test_float16_overflow_is_caught_not_just_warned(tmp_path):
    with pytest.raises(CMTError, match=r"NaN or inf in 16 sample\(s\) \(0, 1, 2, 3, 4, 5, 6, 7, \.\.\.\) of shard 0"
                                       r"; check the teacher's weights, or --dtype float32"):
        gen(tmp_path / "s", sigma_max=1e6)
    gen(tmp_path / "t", sigma_max=1e6, dtype="float32")  # float32 holds it


def test_the_first_failing_shard_is_the_one_reported(tmp_path, monkeypatch):
    """Two shards are encoded at once; when both fail, the error raised is shard 0's even if shard 1's check
    finishes first (here made to: shard 0's is held back). CI once saw shard 1's."""
    import time
    from cmt_pipeline.generation import writer
    real = writer.check_finite

    def slow_for_shard_0(arrays, plan, k):
        if k == 0:
            time.sleep(1.0)
        real(arrays, plan, k)

    monkeypatch.setattr(writer, "check_finite", slow_for_shard_0)  # the forked writer inherits it
    with pytest.raises(CMTError, match=r"\(0, 1, 2, 3, 4, 5, 6, 7, \.\.\.\) of shard 0;"):
        gen(tmp_path / "s", sigma_max=1e6)


def test_lazy_zarr_reads_refuse_nonfinite_values(copy):
    """Read lazily (a store too big to hold in memory), every batch is checked as it is read."""
    source, _ = trajectory_source(copy("a-zarr"), 8, holdout=0, cache=False)

    class NaNArray:  # what a store whose chunks decode to NaN returns
        def get_orthogonal_selection(self, idx):
            return np.full((len(idx), 1, 8, 8), np.nan, np.float16)

    source.source.tensors["x0"].reader.arrays["x0"] = NaNArray()
    with pytest.raises(CMTError, match="holds NaN or inf values in 8 sample"):
        next(source.batches(0))


def test_streamed_webdataset_batches_refuse_nonfinite_values_and_wrong_shapes(copy):
    source, _ = trajectory_source(copy("a-wds"), 8, holdout=0)
    sample = {"traj": np.zeros((4, 1, 8, 8), np.float16), "x0": np.full((1, 8, 8), np.inf, np.float16),
              "labels": np.int64(-1), "index": 3}
    with pytest.raises(CMTError, match=r"holds NaN or inf values in 1 sample\(s\) \(3\)"):
        source.collate([sample])
    with pytest.raises(CMTError, match="the plan says float16"):
        source.collate([{**sample, "x0": np.zeros((1, 8, 8), np.float32)}])


def test_plan_claims_cannot_race_threads(tmp_path):
    """Many generators with different plans claim one empty folder at once: exactly one plan wins each time."""
    for trial in range(100):
        root, barrier, outcomes, refusals = tmp_path / str(trial), threading.Barrier(8), [], []

        def claim(seed):
            barrier.wait()
            try:
                claim_plan(root, {"store_version": STORE_VERSION, "format": "wds", "seed": seed})
                outcomes.append(seed)
            except CMTError as e:
                refusals.append(str(e))

        threads = [threading.Thread(target=claim, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(outcomes) == 1, (trial, outcomes)
        assert all("holds a different dataset (differs in: seed)" in e for e in refusals), refusals
        assert json.loads((root / PLAN).read_text())["seed"] == outcomes[0]


def _claim_in_process(root, seed, barrier, results):
    barrier.wait()
    try:
        claim_plan(root, {"store_version": STORE_VERSION, "format": "wds", "seed": seed})
        results.put(seed)
    except CMTError:
        results.put(None)


def test_plan_claims_cannot_race_processes(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for trial in range(10):
        barrier, results = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_claim_in_process, args=(tmp_path / str(trial), s, barrier, results))
                 for s in range(6)]
        for p in procs:
            p.start()
        winners = [s for s in (results.get(timeout=60) for _ in procs) if s is not None]
        for p in procs:
            p.join()
        assert len(winners) == 1, (trial, winners)


@pytest.mark.parametrize("fmt", ["wds", "zarr"])
def test_a_shard_copied_from_another_dataset_fails_verify(copy, stores, fmt):
    a, b = copy(f"a-{fmt}"), stores / f"b-{fmt}"
    marker = json.loads((b / marker_path(1)).read_text())
    for rel in marker["files"]:
        shutil.copyfile(b / rel, a / rel)
    shutil.copyfile(b / marker_path(1), a / marker_path(1))
    r = cmd("verify", "--quiet", "--finalize", a)
    assert r.exit_code == 1 and "shard 1 (samples 16..31): corrupt: its done marker belongs to another dataset" \
        in r.output, r.output
    assert "ready for training" not in r.output
    # generation treats it as not done, and a rerun replaces it
    gen(a, fmt)
    assert cmd("verify", "--quiet", a).exit_code == 0


EDITS = {
    "sigmas x0.01": lambda m: {**m, "sigmas": [s * 0.01 for s in m["sigmas"]]},
    "num_samples": lambda m: {**m, "num_samples": 40},
    "fingerprint zeroed": lambda m: {**m, "teacher": {**m["teacher"], "fingerprint": "0" * 64}},
    "another format": lambda m: {**m, "format": "zarr"},
    "no plan_fingerprint": lambda m: {k: v for k, v in m.items() if k != "plan_fingerprint"},
    "not a manifest": lambda m: [m],
}


@pytest.mark.parametrize("edit", EDITS)
def test_readers_refuse_a_manifest_that_disagrees_with_the_plan(copy, edit):
    root = copy("a-wds")
    (root / MANIFEST).write_text(json.dumps(EDITS[edit](json.loads((root / MANIFEST).read_text()))))
    with pytest.raises(CMTError, match="is damaged: .* run `cmt verify"):
        trajectory_source(root, 8, holdout=8)
    assert cmd("verify", "--quiet", root).exit_code == 1


def test_editing_plan_and_manifest_together_is_caught_by_the_markers(copy, tmp_path):
    """Even an edit made consistently to plan.json and the manifest (its plan_fingerprint recomputed)."""
    root = copy("a-zarr")
    plan = EDITS["fingerprint zeroed"](json.loads((root / PLAN).read_text()))
    manifest = EDITS["fingerprint zeroed"](json.loads((root / MANIFEST).read_text()))
    (root / PLAN).write_text(json.dumps(plan))
    (root / MANIFEST).write_text(json.dumps({**manifest, "plan_fingerprint": plan_fingerprint(plan)}))
    with pytest.raises(CMTError, match="belongs to another dataset"):
        open_store(root)
    r = cmd("mid-train", "--data", root, "--steps", 2, "--holdout", 8, "--out", tmp_path / "run", "--device", "cpu")
    one_line_error(r, "belongs to another dataset", f"cmt verify {root}")


def test_readers_check_the_arrays_real_shapes(copy):
    root = copy("a-wds")
    reader = open_store(root)
    reader.plan = {**reader.plan, "num_states": 3}
    with pytest.raises(CMTError, match=r"traj holds float16 samples of shape \(4, 1, 8, 8\), the plan says float16"):
        reader.read_shard(0)
    from cmt_pipeline.stores import ZarrReader

    zroot = copy("a-zarr")
    with pytest.raises(CMTError, match="the store is damaged"):
        ZarrReader(zroot, {**json.loads((zroot / PLAN).read_text()), "num_states": 3})


def test_a_stale_repair_keeps_a_manifest_written_after_its_scan(copy):
    root = copy("a-wds")
    marker = (root / marker_path(2)).read_bytes()
    (root / marker_path(2)).unlink()
    (root / MANIFEST).unlink()
    report = verify(root, full=False)
    assert report.missing == [2] and not report.intact
    (root / marker_path(2)).write_bytes(marker)  # a generator finishes the set meanwhile ...
    assert verify(root).intact
    cmd("verify", "--quiet", "--finalize", root)
    assert (root / MANIFEST).exists()
    repair(report)  # ... so the scan's view is stale: nothing it did not see is removed
    assert (root / MANIFEST).exists() and not report.repaired


def test_older_store_format_is_refused_naming_the_fix(copy):
    root = copy("a-wds")
    plan = json.loads((root / PLAN).read_text())
    del plan["store_version"]
    (root / PLAN).write_text(json.dumps(plan))
    for args in (["verify", "--quiet", root], ["inspect", root]):
        one_line_error(cmd(*args), "is a store of format 1; this cmt reads format 2", "regenerate it into a new --out")
    with pytest.raises(CMTError, match="store of format 1"):
        gen(root)


@pytest.mark.slow
def test_two_generate_commands_with_different_seeds_on_one_out(tmp_path):
    """Through the CLI, as the probe did: one run wins, the other exits 2 with one line; the winner's data is whole."""
    import subprocess
    import sys

    for trial in range(2):
        out = tmp_path / str(trial)
        procs = [subprocess.Popen([sys.executable, "-m", "cli", "generate-trajectories", "--quiet", "--teacher",
                                   "gmm:gmm8x8", "--num-samples", "64", "--shard-size", "16", "--device", "cpu",
                                   "--seed", str(seed), "--out", str(out)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for seed in (0, 7)]
        results = [(p.wait(timeout=300), p.stdout.read()) for p in procs]
        assert sorted(rc for rc, _ in results) == [0, 2], results
        loser = next(text for rc, text in results if rc == 2).strip().splitlines()
        assert len(loser) == 1 and "holds a different dataset (differs in: config)" in loser[0], loser
        assert cmd("verify", "--quiet", out).exit_code == 0
