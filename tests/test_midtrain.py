"""Consistency Mid-Training: students, objectives, the trajectory data source and `cmt mid-train` end to end."""

import copy
import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from cmt_pipeline.config import GenerateConfig, MidTrainConfig
from cmt_pipeline.generation import generate
from cmt_pipeline.models import MeanFlowDenoiser, MeanFlowStudent
from cmt_pipeline.objectives.cmt import CMTLoss, CMTMeanFlowLoss
from cmt_pipeline.training.trajectories import trajectory_source
from cmt_pipeline.teachers import EDMDenoiser, Precond, build_unet, load_teacher
from cmt_pipeline.models.io import load_model, model_from_checkpoint
from cmt_pipeline.stores import open_store, read_range
from cmt_pipeline.training.midtrain import mid_train
from cmt_pipeline.errors import CMTError
from conftest import loss_of

TINY = dict(channels=[16, 32], layers_per_block=1)
FAST = dict(device="cpu", tensorboard=False, checkpoint_every=1000, sample_every=0, log_every=1)


@pytest.fixture(scope="module")
def gmm_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("gmm") / "zarr"
    generate(GenerateConfig(teacher="gmm:gmm8x8", num_samples=192, shard_size=64, batch_size=64, device="cpu",
                            out=str(out)), progress=False)
    return out


def tiny_teacher():
    torch.manual_seed(0)
    return EDMDenoiser(build_unet((1, 8, 8), channels=(8, 16), layers_per_block=1), Precond()).eval()


@pytest.mark.slow
def test_meanflow_student_starts_as_the_teachers_velocity():
    teacher = tiny_teacher()
    student = MeanFlowStudent(copy.deepcopy(teacher))
    x, sigma = torch.randn(4, 1, 8, 8), torch.tensor([0.05, 0.5, 2.0, 20.0])
    t = sigma / (1 + sigma)
    d = teacher(x, sigma)
    v = (x - d) / sigma.view(-1, 1, 1, 1) - d  # dz/dt = eps - x0
    z = x / (1 + sigma.view(-1, 1, 1, 1))
    for r in (0.0, 0.3 * t):
        assert torch.allclose(student(z, r, t), v, atol=1e-4 * v.abs().max().item())
    # through the denoiser seam it is the one-step jump z - t u, mapped back to VE coordinates
    assert torch.allclose(MeanFlowDenoiser(student)(x, sigma), z - t.view(-1, 1, 1, 1) * v, atol=1e-4)


def test_cm_loss_is_zero_for_a_perfect_flow_map_and_counts_every_point():
    sigmas = torch.tensor([80.0, 10.0, 1.0, 0.002], dtype=torch.float64)
    x0 = torch.randn(2, 1, 4, 4)
    batch = {"traj": torch.randn(2, 3, 1, 4, 4), "x0": x0, "labels": torch.full((2,), -1)}

    seen = []

    def oracle(x, sigma, labels):  # returns each point's own trajectory endpoint
        seen.append(sigma)
        return x0.repeat_interleave(3, 0)

    loss, _ = loss_of(CMTLoss, sigmas=sigmas)(oracle, batch, 1)
    assert loss.item() == 0 and torch.equal(seen[0], torch.tensor([80.0, 10.0, 1.0] * 2))
    huber = loss_of(CMTLoss, sigmas=sigmas, distance="huber")
    loss, _ = huber(lambda x, s, l: x0.repeat_interleave(3, 0) + 1, batch, 1)
    assert loss.item() == pytest.approx((1 + 0.03**2) ** 0.5 - 0.03, rel=1e-5)


def test_off_grid_points_lie_on_the_trajectory_between_grid_sigmas():
    """For one data point c the probability-flow ODE is the line x(sigma) = c + sigma n, which the DDIM step is exact
    on: every moved point must land on it at a sigma strictly between its grid sigma and the next; the last stored
    state, and all points with off_grid 0, stay on the grid."""
    sigmas = torch.tensor([80.0, 10.0, 1.0, 0.1, 0.002], dtype=torch.float64)
    c, n = torch.randn(64, 1, 4, 4), torch.randn(64, 1, 4, 4)
    traj = c[:, None] + sigmas[:4].float().view(1, 4, 1, 1, 1) * n[:, None]
    batch = {"traj": traj, "x0": c, "labels": torch.full((64,), -1)}
    seen = {}

    def record(x, sigma, labels):
        seen.update(x=x.view(64, -1, 1, 4, 4), sigma=sigma.view(64, -1))
        return x

    torch.manual_seed(0)
    loss_of(CMTLoss, sigmas=sigmas, points_per_traj=3, off_grid=1.0)(record, batch, 1)
    x, sig = seen["x"], seen["sigma"]
    grid = sigmas[:4].float()
    on_grid = (sig[..., None] == grid).any(-1)
    assert torch.allclose(x, c[:, None] + sig.view(64, 3, 1, 1, 1) * n[:, None], atol=1e-4)
    assert torch.equal(on_grid, sig == grid[3])  # with off_grid 1 only the last state (0.1) stays where it was
    assert (((sig < 80) & (sig > 0.1)) | on_grid).all()
    torch.manual_seed(0)
    loss_of(CMTLoss, sigmas=sigmas, points_per_traj=3, off_grid=0.5)(record, batch, 1)
    moved = ~(seen["sigma"][..., None] == grid).any(-1)
    assert 0.3 < moved.float().mean() < 0.5  # half of the ~3/4 of points that may move
    loss_of(CMTLoss, sigmas=sigmas, off_grid=0.0)(record, batch, 1)
    assert torch.equal(seen["sigma"], grid.expand(64, 4)) and torch.equal(seen["x"], traj)


def test_mf_loss_targets_are_average_velocities_along_the_trajectory():
    """On a straight flow-matching line z_t = (1 - t) a + t b, every pair's average velocity is b - a."""
    sigmas = torch.tensor([80.0, 5.0, 0.5, 0.002], dtype=torch.float64)
    a, b = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = (sigmas / (1 + sigmas)).float()
    z = [(1 - ti) * a + ti * b for ti in t]
    x = [zi * (1 + s.item()) for zi, s in zip(z, sigmas)]  # back to EDM (VE) coordinates
    batch = {"traj": torch.stack(x[:3], 1), "x0": x[3], "labels": torch.full((3,), -1)}
    loss_fn = loss_of(CMTMeanFlowLoss, sigmas=sigmas, pairs_per_traj=8)
    loss, logs = loss_fn(lambda zz, r, tt, l: (b - a).repeat_interleave(8, 0), batch, 1)
    assert loss.item() < 1e-8 and 0 < logs["endpoint_pairs"] <= 1


def test_mf_off_grid_sources_stay_on_the_line_strictly_before_their_targets():
    """The mf flavour with off_grid 1: on the same straight line, a source moved between grid times must still
    have average velocity b - a to its target (so it lies on the trajectory), sit strictly between two grid times
    (or on x0's, never: the endpoint is never a source) and stay later than its target point."""
    sigmas = torch.tensor([80.0, 5.0, 0.5, 0.002], dtype=torch.float64)
    a, b = torch.randn(32, 1, 4, 4), torch.randn(32, 1, 4, 4)
    t = (sigmas / (1 + sigmas)).float()
    x = [((1 - ti) * a + ti * b) * (1 + s.item()) for ti, s in zip(t, sigmas)]
    batch = {"traj": torch.stack(x[:3], 1), "x0": x[3], "labels": torch.full((32,), -1)}
    seen = {}

    def oracle(zz, r, tt, labels):
        seen.update(r=r, t=tt)
        return (b - a).repeat_interleave(8, 0)

    torch.manual_seed(0)
    loss, _ = loss_of(CMTMeanFlowLoss, sigmas=sigmas, pairs_per_traj=8, off_grid=1.0)(oracle, batch, 1)
    assert loss.item() < 1e-8
    assert (seen["t"] > seen["r"]).all()
    assert not (seen["t"][:, None] == t).any()  # every source moved: no grid time left among them
    loss_of(CMTMeanFlowLoss, sigmas=sigmas, pairs_per_traj=8)(oracle, batch, 1)
    assert (seen["t"][:, None] == t).any(1).all()  # off_grid 0: every source on the grid


def test_data_source_holds_out_the_last_trajectories_and_resumes_exactly(gmm_store, tmp_path):
    wds = tmp_path / "wds"
    generate(GenerateConfig(teacher="gmm:gmm8x8", num_samples=192, shard_size=64, batch_size=64, device="cpu",
                            out=str(wds), format="wds"), progress=False)
    for path in (gmm_store, wds):
        source, info = trajectory_source(path, batch_size=16, seed=3, holdout=64)
        assert info["holdout"] == 64 and len(info["fingerprint"]) == 64
        stream = source.batches(0)
        batches = [next(stream) for _ in range(12)]
        assert batches[0]["traj"].shape == (16, 16, 1, 8, 8) and batches[0]["x0"].shape == (16, 1, 8, 8)
        # never a held-out trajectory: compare against the store's last 64 endpoints
        from cmt_pipeline.stores import read_all

        held = read_all(path)["x0"][128:]
        seen = torch.cat([b["x0"] for b in batches]).numpy()
        assert not any((held == s).all(axis=(1, 2, 3)).any() for s in seen)
        again = next(source.batches(5))
        assert torch.equal(again["traj"], batches[5]["traj"])  # batch 6 after a resume at step 5
    # a store too big for memory is read per batch: the same batches as the in-memory copy
    cached, _ = trajectory_source(gmm_store, batch_size=16, seed=3, holdout=64, cache=True)
    lazy, _ = trajectory_source(gmm_store, batch_size=16, seed=3, holdout=64, cache=False)
    for a, b in zip([next(cached.batches(k)) for k in (0, 9)], [next(lazy.batches(k)) for k in (0, 9)]):
        assert all(torch.equal(a[name], b[name]) for name in ("traj", "x0", "labels"))
    with pytest.raises(CMTError, match="holdout"):
        trajectory_source(gmm_store, 8, holdout=192)


@pytest.mark.slow
def test_cm_mid_training_on_gmm_approaches_the_exact_flow_map(gmm_store, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["mid-train", "--data", str(gmm_store), "--holdout", "64", "--init", "random",
                                 "--channels", "16,32", "--layers-per-block", "1", "--steps", "40",
                                 "--eval-every", "20", "--ema-decay", "0", "--lr", "2e-3", "--batch-size", "4",
                                 "--points-per-traj", "8", "--out", str(out), "--device", "cpu", "--quiet",
                                 "--no-tensorboard", "--sample-every", "0"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 20, 40]
    assert rows[-1]["exact_mse"] < 0.75 * rows[0]["exact_mse"], rows
    assert (out / "eval.png").stat().st_size > 1000 and (out / "samples").is_dir()
    ckpt = load_model(out / "model.ckpt", kind="mid-cm")
    assert ckpt["data"]["holdout"] == 64 and ckpt["data"]["teacher"] == "gmm:gmm8x8"
    student = load_teacher(str(out / "student"))
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(student(x, 0.003), x, atol=1e-6)  # boundary condition survives export
    assert torch.equal(model_from_checkpoint(ckpt)(x, 5.0), student(x, 5.0))


def test_mid_training_logs_the_error_on_trajectories_it_trains_on(gmm_store, tmp_path):
    """eval.jsonl's train_mse is the 1-step error on the store's first trajectories (trained on), teacher_mse on
    its last (held out): both recomputed here from the stored priors with the final EMA student."""
    out = tmp_path / "run"
    cfg = MidTrainConfig(data=str(gmm_store), out=str(out), init="random", holdout=64, eval_samples=32, steps=4,
                         eval_every=4, batch_size=4, lr=2e-3, **TINY, **FAST)
    mid_train(cfg, progress=False)
    rows = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 4] and all("train_mse" in r for r in rows)
    student = model_from_checkpoint(load_model(out / "model.ckpt", kind="mid-cm"))
    store = read_range(open_store(gmm_store))
    sigma_max = open_store(gmm_store).plan["sigmas"][0]

    def error(rows):
        prior, x0 = (torch.from_numpy(store[k][rows]).float() for k in ("prior", "x0"))
        with torch.no_grad():
            return float((student(sigma_max * prior, torch.full((len(prior),), sigma_max)) - x0).square().mean())

    assert rows[-1]["train_mse"] == pytest.approx(error(slice(0, 32)), rel=1e-4)
    assert rows[-1]["teacher_mse"] == pytest.approx(error(slice(160, 192)), rel=1e-4)


def test_a_mid_training_run_opens_its_store_once(gmm_store, tmp_path, monkeypatch):
    """The store's checks (manifest against every file), plan, training data, held-out and trained-on samples and
    VAE record come from one open_store (issue 32: it was opened five times, each re-checking every file)."""
    import cmt_pipeline.latents
    import cmt_pipeline.stores

    checks, plans = [], []
    check, read_plan = cmt_pipeline.stores.manifest_problems, cmt_pipeline.latents.read_plan
    monkeypatch.setattr(cmt_pipeline.stores, "manifest_problems", lambda *a: checks.append(1) or check(*a))
    monkeypatch.setattr(cmt_pipeline.latents, "read_plan", lambda *a: plans.append(1) or read_plan(*a))
    mid_train(MidTrainConfig(data=str(gmm_store), out=str(tmp_path / "run"), init="random", holdout=64,
                             eval_samples=16, steps=1, batch_size=4, **TINY, **FAST), progress=False)
    assert len(checks) == 1 and not plans


@pytest.mark.slow
def test_mf_mid_training_on_gmm_improves_the_one_step_map(gmm_store, tmp_path):
    cfg = MidTrainConfig(data=str(gmm_store), out=str(tmp_path / "mf"), flavour="mf", init="random", holdout=64,
                         steps=40, eval_every=40, ema_decay=0.0, lr=2e-3, batch_size=4, pairs_per_traj=8,
                         **TINY, **FAST)
    r = mid_train(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "mf" / "eval.jsonl").read_text().splitlines()]
    assert rows[-1]["exact_mse"] < 0.75 * rows[0]["exact_mse"], rows
    ckpt = load_model(r["checkpoint"], kind="mid-mf")
    assert isinstance(model_from_checkpoint(ckpt), MeanFlowStudent)


@pytest.mark.slow
def test_resume_gives_the_uninterrupted_losses(gmm_store, tmp_path):
    """Stop after step 3 (last checkpoint at 2), resume: steps 3-5 match an uninterrupted run."""
    def losses(run):
        return {json.loads(l)["step"]: json.loads(l)["loss"] for l in (run / "log.jsonl").read_text().splitlines()}

    class Stop(Exception):
        pass

    def stop_at_3(state):
        if state.step == 3:
            raise Stop

    def cfg(name):
        return MidTrainConfig(data=str(gmm_store), out=str(tmp_path / name), init="random", holdout=0, steps=5,
                              lr=1e-3, batch_size=2, points_per_traj=4, **TINY, **{**FAST, "checkpoint_every": 2})

    mid_train(cfg("a"), progress=False)
    with pytest.raises(Stop):
        mid_train(cfg("b"), progress=False, callbacks=[stop_at_3])
    mid_train(cfg("b"), resume="latest", progress=False)
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(b) == [1, 2, 3, 4, 5]
    for k in (3, 4, 5):
        assert b[k] == pytest.approx(a[k], rel=1e-6), k
    assert len({round(a[k], 6) for k in a}) == 5  # the losses do change from step to step


def test_bad_mid_training_inputs(gmm_store, tmp_path):
    with pytest.raises(CMTError, match="needs --data"):
        mid_train(MidTrainConfig(out=str(tmp_path / "x")), progress=False)
    with pytest.raises(CMTError, match="not a trajectory dataset"):
        mid_train(MidTrainConfig(data=str(tmp_path), out=str(tmp_path / "x")), progress=False)
    with pytest.raises(CMTError, match="needs a network teacher"):
        mid_train(MidTrainConfig(data=str(gmm_store), init="teacher", holdout=64, out=str(tmp_path / "x")),
                  progress=False)
    with pytest.raises(CMTError, match="shape"):
        mid_train(MidTrainConfig(data=str(gmm_store), teacher="gmm:gmm2d", init="random", holdout=64,
                                 out=str(tmp_path / "x")), progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_two_process_mid_training_on_a_webdataset_store(tmp_path):
    """`accelerate launch --num_processes 2` on CPU (gloo): each rank streams its own resampled shards."""
    import os
    import socket
    import subprocess
    import sys

    wds = tmp_path / "wds"
    generate(GenerateConfig(teacher="gmm:gmm8x8", num_samples=64, shard_size=16, batch_size=16, steps=4,
                            device="cpu", out=str(wds), format="wds"), progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(port), "-m", "cli", "mid-train", "--data", str(wds), "--holdout", "16", "--init", "random",
           "--channels", "8,16", "--layers-per-block", "1", "--steps", "3", "--batch-size", "4",
           "--checkpoint-every", "2", "--log-every", "1", "--eval-every", "3", "--device", "cpu", "--out", str(out),
           "--no-tensorboard", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["num_processes"] == 2
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-0000003"
    assert {p.name for p in (out / "checkpoints" / "step-0000003").iterdir()} == {"model.safetensors", "ema.safetensors", "optimizer.pt", "state.json"}
    assert [json.loads(l)["step"] for l in (out / "eval.jsonl").read_text().splitlines()] == [0, 3]
    assert load_model(out / "model.ckpt", kind="mid-cm")["step"] == 3


def test_resuming_a_finished_run_says_nothing_is_left(gmm_store, tmp_path):
    """A kill after the last checkpoint leaves a finished run; --resume latest then trains no step, and the summary
    line had formatted the missing loss (TypeError)."""
    out = tmp_path / "done"
    args = ["mid-train", "--data", str(gmm_store), "--out", str(out), "--init", "random", "--holdout", "64",
            "--steps", "2", "--batch-size", "2", "--points-per-traj", "4", "--channels", "16,32",
            "--layers-per-block", "1", "--device", "cpu", "--no-tensorboard", "--checkpoint-every", "2",
            "--sample-every", "0", "--eval-every", "0", "--quiet"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    r = CliRunner().invoke(cli, [*args, "--resume", "latest"])
    assert r.exit_code == 0 and "2 steps" in r.output and "no steps left to train" in r.output, r.output


def test_resume_refuses_other_data_at_the_same_path(tmp_path):
    """A store replaced by one of another seed at the same path was silently mixed into the resumed run."""
    store = tmp_path / "store"

    def make(seed):
        shutil.rmtree(store, ignore_errors=True)
        generate(GenerateConfig(teacher="gmm:gmm8x8", num_samples=32, shard_size=16, batch_size=16, steps=4,
                                device="cpu", seed=seed, out=str(store)), progress=False)

    cfg = MidTrainConfig(data=str(store), out=str(tmp_path / "run"), init="random", holdout=8, steps=4, lr=1e-3,
                         batch_size=2, points_per_traj=4, eval_every=0, **TINY, **{**FAST, "checkpoint_every": 2})

    class Stop(Exception):
        pass

    def stop_at_3(state):
        if state.step == 3:
            raise Stop

    make(0)
    with pytest.raises(Stop):
        mid_train(cfg, progress=False, callbacks=[stop_at_3])
    make(1)
    with pytest.raises(CMTError, match="cannot resume .*: it trained on data with fingerprint [0-9a-f]{16}, and the "
                                       "data given now has fingerprint [0-9a-f]{16}"):
        mid_train(cfg, resume="latest", progress=False)
    make(0)  # the original data resumes
    assert mid_train(cfg, resume="latest", progress=False)["step"] == 4
