"""Post-training: the ECT and MeanFlow objectives' mechanics, the --init rules, and `cmt post-train` end to end."""

import json
import os
import socket
import subprocess
import sys
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from cmt_pipeline.config import PostTrainConfig
from cmt_pipeline.models import MeanFlowStudent, consistency_student
from cmt_pipeline.objectives import ect as ect_module
from cmt_pipeline.objectives.ect import ECTLoss, ect_r
from cmt_pipeline.objectives.meanflow import MeanFlowLoss, meanflow_target
from cmt_pipeline.teachers import EDMDenoiser, Precond, build_unet
from cmt_pipeline.models.io import load_model, model_from_checkpoint, save_model
from cmt_pipeline.training.posttrain import post_train
from cmt_pipeline.errors import CMTError
from conftest import loss_of

FAST = dict(device="cpu", tensorboard=False, checkpoint_every=1000, sample_every=0, log_every=5)


def tiny_net(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return EDMDenoiser(build_unet((1, 8, 8), channels=(8, 16), layers_per_block=1, dropout=dropout), Precond())


def meanflow_student(seed=0):
    student = MeanFlowStudent(tiny_net(seed=seed))
    torch.nn.init.normal_(student.gap_embeddings[0].linear_2.weight, std=0.2)  # so the gap input matters
    return student


def save_student(path, model, kind):
    save_model(path, kind=kind, model=model, ema_model=model, step=0, config={}, data={})
    return str(path)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# ---- MeanFlow ------------------------------------------------------------------------------------------------

def test_meanflow_dudt_is_the_total_derivative_along_the_flow():
    """float64, a function with a known derivative: du/dt = J_z u . v + du/dt (partial), r held fixed."""
    z, v = torch.randn(3, 1, 2, 2, dtype=torch.float64), torch.randn(3, 1, 2, 2, dtype=torch.float64)
    t, r = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64), torch.tensor([0.1, 0.5, 0.0], dtype=torch.float64)

    def u(z, r, t, labels=None):
        return z**2 * t.view(-1, 1, 1, 1) + r.view(-1, 1, 1, 1) * z

    u_tgt, dudt = meanflow_target(u, z, r, t, v)
    col = (-1, 1, 1, 1)
    exact = 2 * z * v * t.view(col) + z**2 + r.view(col) * v
    assert torch.allclose(dudt, exact, rtol=0, atol=1e-12)
    assert torch.allclose(u_tgt, v - (t - r).view(col) * exact, rtol=0, atol=1e-12)
    assert torch.equal(u_tgt[1], v[1])  # r = t: the flow-matching target


@pytest.mark.slow
def test_meanflow_dudt_of_the_student_matches_central_finite_differences():
    """The student in float32: central differences along z (step 3e-3) and along t (step 1e-5: the time embedding
    oscillates fast in t), summed as the total derivative is linear in the tangent (v, 0, 1)."""
    torch.manual_seed(1)
    student = meanflow_student().train()
    z, v = torch.randn(6, 1, 8, 8), 20 * torch.randn(6, 1, 8, 8)  # a large v: the z term is a third of du/dt
    t = torch.tensor([0.05, 0.2, 0.4, 0.6, 0.8, 0.95])
    r = t * torch.tensor([0.0, 0.5, 0.9, 0.3, 1.0, 0.1])
    _, dudt = meanflow_target(student, z, r, t, v)
    with torch.no_grad():
        fd = (student(z + 3e-3 * v, r, t) - student(z - 3e-3 * v, r, t)) / 6e-3 \
            + (student(z, r, t + 1e-5) - student(z, r, t - 1e-5)) / 2e-5
        _, partial_t = torch.func.jvp(lambda t_: student(z, r, t_), (t,), (torch.ones_like(t),))
        _, moving_r = torch.func.jvp(lambda r_, t_: student(z, r_, t_), (r, t), (torch.ones_like(r),) * 2)
    assert rel(dudt, fd) < 5e-3
    assert rel(partial_t + (dudt - partial_t), fd) < 5e-3 and rel(partial_t, fd) > 0.1  # the J_z u . v term counts
    assert rel(moving_r + (dudt - partial_t), fd) > 5e-2  # and r is held fixed


def test_meanflow_loss_stops_the_gradient_at_the_target_and_weights_adaptively():
    """u = a z: du/dt = a v, so u_tgt = v - (t - r) a v; the loss is sony/mf-rae's mean_i L_i^2 / (L_i^2 + c)
    with L_i the summed squared error, and its gradient in a treats u_tgt and the weight as constants."""
    a = torch.nn.Parameter(torch.tensor(0.7))
    model = lambda z, r, t, labels=None: a * z  # noqa: E731
    x0 = torch.randn(16, 1, 4, 4)
    loss_fn = loss_of(MeanFlowLoss, r_fraction=0.5)
    torch.manual_seed(3)
    loss, logs = loss_fn(model, {"image": x0}, 1)
    loss.backward()
    # replay the same draws to build the expected gradient by hand
    torch.manual_seed(3)
    sigma = (torch.randn(16, 2) * 1.0 - 0.4).exp().clamp(0.002, 80.0)
    tt = sigma / (1 + sigma)
    t, r = tt.max(1).values, tt.min(1).values
    r = torch.where(torch.rand(16) < 0.5, r, t)
    eps = torch.randn_like(x0)
    col = (-1, 1, 1, 1)
    z, v = (1 - t).view(col) * x0 + t.view(col) * eps, eps - x0
    u_tgt = v - (t - r).view(col) * 0.7 * v
    res = (0.7 * z - u_tgt).flatten(1).double()
    summed = (res**2).sum(1)
    w = 1 / (summed**2 + 1e-3)
    assert loss.item() == pytest.approx((w * summed**2).mean().item(), rel=1e-5)
    grad = (w * 2 * summed * (2 * res * z.flatten(1)).sum(1)).mean()
    assert a.grad.item() == pytest.approx(grad.item(), rel=1e-4)
    assert 0 < logs["r_neq_t"] < 1


# ---- ECT -----------------------------------------------------------------------------------------------------

def test_ect_r_is_the_sigmoid_mapping_clamped_at_zero():
    t = torch.tensor([1e-3, 0.5, 5.0, 80.0])
    assert torch.equal(ect_r(t, 2.0)[:2], torch.zeros(2))  # (1 + 8 sigmoid(-t)) / q > 1 near t = 0
    expected = t * (1 - (1 + 8 * torch.sigmoid(-t)) / 4096)
    assert torch.allclose(ect_r(t, 4096.0), expected) and (ect_r(t, 4096.0) < t).all()
    curriculum = loss_of(ECTLoss, q=4, q_double_every=10)
    assert curriculum.q_at(1) == 4 and curriculum.q_at(21) == 4**3


def test_ect_uses_x0_as_the_target_where_r_is_zero_and_never_evaluates_sigma_zero():
    seen = []

    def identity(x, sigma, labels=None):  # f(x, sigma) = x: pred = x_t and target = x_r (x0 where r = 0)
        seen.append(sigma.clone())
        return x

    x0 = torch.randn(32, 1, 4, 4)
    torch.manual_seed(0)
    loss, logs = loss_of(ECTLoss, p_mean=-6.0, p_std=0.5, q=2.0)(identity, {"image": x0}, 1)
    torch.manual_seed(0)
    t = (torch.randn(32) * 0.5 - 6.0).exp()
    eps = torch.randn_like(x0)
    assert logs["r_zero"] == 1.0 and all((s > 0).all() for s in seen)
    expected = ((t.view(-1, 1, 1, 1) * eps) ** 2).flatten(1).sum(1).sqrt() / t  # ||x_t - x0|| / (t - 0)
    assert loss.item() == pytest.approx(expected.mean().item(), rel=1e-5)


def test_ect_target_is_stop_gradient():
    """f = a x: with the target y held constant, dL/da = mean_i (a x_t - y) . x_t / ||a x_t - y|| / (t - r)."""
    a = torch.nn.Parameter(torch.tensor(1.3))
    x0 = torch.randn(16, 1, 4, 4)
    torch.manual_seed(5)
    loss, _ = loss_of(ECTLoss, q=8.0)(lambda x, s, labels=None: a * x, {"image": x0}, 1)
    loss.backward()
    torch.manual_seed(5)
    t = (torch.randn(16) * 2.0 - 1.1).exp()
    r = ect_r(t, 8.0)
    eps = torch.randn_like(x0)
    xt, xr = (x0 + t.view(-1, 1, 1, 1) * eps).flatten(1), (x0 + r.view(-1, 1, 1, 1) * eps).flatten(1)
    xr = torch.where((r == 0).view(-1, 1), x0.flatten(1), xr)
    res = 1.3 * xt - 1.3 * xr
    grad = ((res * xt).sum(1) / res.norm(dim=1) / (t - r)).mean()
    assert a.grad.item() == pytest.approx(grad.item(), rel=1e-4)


def test_ect_target_uses_the_same_dropout_masks(monkeypatch):
    """At r -> t the weighted loss tends to 0 only if both evaluations drop the same units."""
    student = consistency_student(tiny_net(dropout=0.5)).train()
    batch = {"image": torch.randn(16, 1, 8, 8).clamp(-1, 1)}
    loss_fn = loss_of(ECTLoss, q=1e6)
    torch.manual_seed(0)
    matched, _ = loss_fn(student, batch, 1)
    monkeypatch.setattr(ect_module, "same_randomness", lambda device: nullcontext())
    torch.manual_seed(0)
    unmatched, _ = loss_fn(student, batch, 1)
    assert matched.item() < 1e-3 * unmatched.item(), (matched.item(), unmatched.item())


# ---- --init and the stage --------------------------------------------------------------------------------

def test_init_of_the_wrong_flavour_is_refused_with_one_line(tmp_path):
    cm = save_student(tmp_path / "cm.ckpt", consistency_student(tiny_net()), "mid-cm")
    mf = save_student(tmp_path / "mf.ckpt", meanflow_student(), "mid-mf")
    for init, objective, expected in ((cm, "meanflow", "'mid-cm' checkpoint; meanflow post-training starts from "
                                                        "a mid-mf checkpoint"),
                                      (mf, "ect", "'mid-mf' checkpoint; ect post-training starts from a mid-cm"),
                                      ("gmm:gmm8x8", "ect", "GMMDenoiser, which has no network"),
                                      (str(tmp_path / "no.ckpt"), "ect", "no.ckpt does not exist")):
        r = CliRunner().invoke(cli, ["post-train", "--init", init, "--objective", objective, "--data", "gmm:gmm8x8",
                                     "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet"])
        assert r.exit_code == 2 and expected in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "run").exists()
    np.save(tmp_path / "big.npy", np.zeros((4, 16, 16), np.uint8))
    with pytest.raises(CMTError, match=r"works on shape \(1, 8, 8\) but --data .* has \(1, 16, 16\)"):
        post_train(PostTrainConfig(init=cm, data=str(tmp_path / "big.npy"), out=str(tmp_path / "d"), **FAST))


def test_diffusion_and_cmt_inits_become_students_of_the_right_kind(tmp_path):
    from cmt_pipeline.training.posttrain import build_student

    teacher = save_student(tmp_path / "teacher.ckpt", tiny_net(), "pretrain")
    mid = save_student(tmp_path / "mid.ckpt", meanflow_student(seed=4), "mid-mf")
    cfg = PostTrainConfig(init=teacher, data="gmm:gmm8x8", dropout=0.3, **FAST)
    ect, origin = build_student(cfg, (1, 8, 8))
    assert origin == "diffusion" and ect.precond.boundary_sigma == 0.003 and ect.training
    assert all(m.p == 0.3 for m in ect.modules() if isinstance(m, torch.nn.Dropout))
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(ect.eval()(x, 0.003), x, atol=1e-6)  # boundary condition
    mf, origin = build_student(PostTrainConfig(init=mid, objective="meanflow", **FAST), (1, 8, 8))
    assert origin == "cmt" and torch.equal(mf.gap_embeddings[0].linear_2.weight,
                                           model_from_checkpoint(load_model(mid)).gap_embeddings[0].linear_2.weight)
    rnd, origin = build_student(PostTrainConfig(init="random", arch=teacher, objective="meanflow", **FAST),
                                (1, 8, 8))
    assert origin == "random" and isinstance(rnd, MeanFlowStudent)
    assert rnd.net.backbone.config.block_out_channels == (8, 16)  # the --arch network's architecture
    assert not torch.equal(rnd.net.backbone.conv_in.weight, mf.net.backbone.conv_in.weight)
    ect_rnd, _ = build_student(PostTrainConfig(init="random", arch=mid, **FAST), (1, 8, 8))  # any flavour's arch
    assert isinstance(ect_rnd, EDMDenoiser) and ect_rnd.precond.boundary_sigma == 0.003


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["ect", "meanflow"])
def test_short_post_training_on_gmm_improves_the_one_step_error(objective, tmp_path):
    out = tmp_path / objective
    r = CliRunner().invoke(cli, ["post-train", "--init", "random", "--objective", objective, "--data", "gmm:gmm8x8",
                                 "--gmm-samples", "1024", "--channels", "8,16", "--layers-per-block", "1",
                                 "--steps", "40", "--batch-size", "32", "--lr", "5e-3", "--ema-decay", "0",
                                 "--q", "4", "--eval-samples", "64", "--out", str(out), "--device", "cpu",
                                 "--quiet", "--no-tensorboard", "--sample-every", "20", "--log-every", "10"])
    assert r.exit_code == 0, r.output
    assert [p.name for p in (out / "samples").iterdir()] == ["step-0000020.png"]  # the end is samples-1step.png
    rows = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 40]
    assert rows[-1]["1step_flow_map_mse"] < 0.85 * rows[0]["1step_flow_map_mse"], rows
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["1step_flow_map_mse"] == rows[-1]["1step_flow_map_mse"] and "2step_sliced_w2" in metrics
    assert load_model(out / "model.ckpt", kind=f"post-{objective}")["data"]["init_origin"] == "random"
    assert (out / "samples-1step.png").stat().st_size > 100 and (out / "samples-2step.png").exists()
    config = json.loads((out / "config.json").read_text())["config"]
    assert (config["p_mean"], config["p_std"]) == ((-1.1, 2.0) if objective == "ect" else (-0.4, 1.0))


@pytest.mark.slow
def test_meanflow_post_training_under_two_process_ddp(tmp_path):
    """`accelerate launch` with 2 CPU processes: the JVP runs on the module inside DDP, the gradient forward
    through DDP, with gradient accumulation and dropout; the run completes on both ranks and trains."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(port), "-m", "cli", "post-train", "--init", "random", "--objective", "meanflow", "--data", "gmm:gmm8x8",
           "--gmm-samples", "64", "--channels", "8,16", "--layers-per-block", "1", "--dropout", "0.1",
           "--steps", "3", "--batch-size", "8", "--grad-accum", "2", "--r-fraction", "1", "--eval-samples", "8",
           "--device", "cpu", "--out", str(out), "--log-every", "1", "--no-tensorboard", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["num_processes"] == 2
    ckpt = load_model(out / "model.ckpt", kind="post-meanflow")
    torch.manual_seed(0)
    init = MeanFlowStudent(EDMDenoiser(build_unet((1, 8, 8), (8, 16), 1), Precond())).state_dict()
    assert ckpt["step"] == 3 and any(not torch.allclose(ckpt["state_dict"][k], v) for k, v in init.items())
    step = out / "checkpoints" / "step-0000003"
    assert {p.name for p in step.iterdir()} == {"model.safetensors", "ema.safetensors", "optimizer.pt", "state.json"}  # written once, by the main process
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2, 3] and all(row["r_neq_t"] == 1 for row in log)
    rows = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 3]  # measured once, by the main process
    assert "1step_flow_map_mse" in json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_post_training_from_a_teacher_folder_writes_a_loadable_checkpoint(tmp_path):
    """A folder-loaded network (diffusers from_pretrained records a Path in its config) still gives a
    model.ckpt that load_model reads with weights_only=True."""
    from cmt_pipeline.models.io import export_denoiser

    export_denoiser(tiny_net(), tmp_path / "teacher")
    r = post_train(PostTrainConfig(init=str(tmp_path / "teacher"), data="gmm:gmm8x8", gmm_samples=64, steps=2,
                                   batch_size=8, eval_samples=8, out=str(tmp_path / "run"), **FAST), progress=False)
    ckpt = load_model(r["checkpoint"], kind="post-ect")
    assert ckpt["data"]["init_origin"] == "diffusion" and model_from_checkpoint(ckpt).precond.boundary_sigma == 0.003


def test_post_training_numbers_are_cmt_evaluates_numbers(tmp_path):
    """Evaluation lives in one place: the trainer's 1- and 2-step metrics are `cmt evaluate`'s on the saved model at
    the trainer's evaluation seed (1) and sample count, to round-off."""
    out = tmp_path / "run"
    metrics = post_train(PostTrainConfig(init="random", data="gmm:gmm8x8", gmm_samples=64, channels=[8, 16],
                                         layers_per_block=1, steps=3, batch_size=8, lr=5e-3, eval_samples=64,
                                         out=str(out), **FAST), progress=False)
    for steps, keys in ((1, ("flow_map_mse", "sliced_w2")), (2, ("sliced_w2",))):
        r = CliRunner().invoke(cli, ["evaluate", "--student", str(out / "model.ckpt"), "--gmm", "gmm:gmm8x8",
                                     "--steps", str(steps), "--seed", "1", "--num-samples", "64", "--device", "cpu",
                                     "--quiet", "--out", str(tmp_path / f"eval{steps}")])
        assert r.exit_code == 0, r.output
        ours = json.loads((tmp_path / f"eval{steps}" / "evaluation.json").read_text())["metrics"]
        for key in keys:
            assert metrics[f"{steps}step_{key}"] == pytest.approx(ours[key], rel=1e-5), (steps, key)


def test_resume_refuses_other_npy_data_at_the_same_path(tmp_path):
    """post-train --data X.npy, stopped, X.npy replaced, --resume latest: the run mixed both sets silently."""
    cm = save_student(tmp_path / "cm.ckpt", consistency_student(tiny_net()), "mid-cm")
    data = tmp_path / "x.npy"
    cfg = PostTrainConfig(init=cm, data=str(data), out=str(tmp_path / "run"), steps=3, batch_size=4, eval_every=0,
                          eval_samples=8, **{**FAST, "checkpoint_every": 1})

    def stop_at_2(state):
        if state.step == 2:
            raise KeyboardInterrupt

    np.save(data, np.random.default_rng(0).integers(0, 255, (16, 8, 8), np.uint8))
    with pytest.raises(KeyboardInterrupt):
        post_train(cfg, progress=False, callbacks=[stop_at_2])
    np.save(data, np.random.default_rng(1).integers(0, 255, (16, 8, 8), np.uint8))
    with pytest.raises(CMTError, match="it trained on data with fingerprint .* now has fingerprint"):
        post_train(cfg, resume="latest", progress=False)


def test_the_init_checkpoint_is_read_once(tmp_path, monkeypatch):
    """--init's model.ckpt is opened once per run: the student and the VAE record both come from that read
    (issue 32: it was read twice, once for the VAE record and once for the network)."""
    init = save_student(tmp_path / "mid.ckpt", consistency_student(tiny_net()), "mid-cm")
    reads, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: (reads.append(str(f)), load(f, *a, **k))[1])
    post_train(PostTrainConfig(init=init, data="gmm:gmm8x8", gmm_samples=64, steps=1, batch_size=8, eval_samples=8,
                               num_grid_samples=4, out=str(tmp_path / "run"), **FAST), progress=False)
    assert reads.count(init) == 1, reads


def test_keep_best_keeps_each_step_counts_best_evaluation_and_its_bar_survives_a_resume(tmp_path, monkeypatch):
    """--keep-best: best-<k>step.ckpt holds the weights of the evaluation with the lowest held-out quality at k
    steps (ECT's 1- and 2-step peaks differ), and a resumed run keeps comparing with the kept files' values."""
    from safetensors.torch import load_file

    from cmt_pipeline.training.loop import EvalLog

    scripted = {0: (1.0, 1.0), 1: (5.0, 5.0), 2: (3.0, 6.0), 3: (4.0, 2.0), 4: (6.0, 7.0)}  # step -> 1-, 2-step W2

    def measure(self, model, step):
        self.last = {"step": step, "1step_sliced_w2": scripted[step][0], "2step_sliced_w2": scripted[step][1]}
        with open(self.path, "a") as f:
            f.write(json.dumps(self.last) + "\n")
        return self.last

    monkeypatch.setattr(EvalLog, "measure", measure)
    cm = save_student(tmp_path / "cm.ckpt", consistency_student(tiny_net()), "mid-cm")

    def run(out, resume=None, callbacks=(), eval_samples=5000):
        cfg = PostTrainConfig(init=cm, data="gmm:gmm8x8", gmm_samples=64, steps=4, batch_size=8, lr=1e-3,
                              eval_every=1, keep_best=True, keep_checkpoints=0, num_grid_samples=4, out=str(out),
                              eval_samples=eval_samples, **{**FAST, "checkpoint_every": 1})
        return post_train(cfg, resume=resume, progress=False, callbacks=callbacks)

    def stop_at_3(state):
        if state.step == 3:
            raise KeyboardInterrupt

    whole = run(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", callbacks=[stop_at_3])
    resumed = run(tmp_path / "cut", resume="latest")
    for out, metrics in ((tmp_path / "whole", whole), (tmp_path / "cut", resumed)):
        # step 0 (the init) reads best but is never kept; 4 is worse than the kept, though better than nothing
        assert metrics["best"] == {"1step": {"step": 2, "metric": "sliced_w2", "value": 3.0},
                                   "2step": {"step": 3, "metric": "sliced_w2", "value": 2.0}}
        for steps, step in ((1, 2), (2, 3)):
            kept = load_model(out / f"best-{steps}step.ckpt", "post-ect")
            assert kept["step"] == step and kept["selected"]["eval_seed"] == 1
            ema = load_file(out / "checkpoints" / f"step-{step:07d}" / "ema.safetensors")
            assert all(torch.equal(kept["ema_state_dict"][k], v) for k, v in ema.items())
    # FD depends on the sample count: resumed with another --eval-samples, the kept values are no bar
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "other", callbacks=[stop_at_3])
    assert run(tmp_path / "other", resume="latest", eval_samples=4000)["best"]["1step"]["step"] == 4
    r = CliRunner().invoke(cli, ["post-train", "--init", cm, "--data", "gmm:gmm8x8", "--keep-best", "--out",
                                 str(tmp_path / "no"), "--device", "cpu", "--quiet"])
    assert r.exit_code == 2 and "--keep-best chooses among the evaluations every --eval-every" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "no").exists()
    np.save(tmp_path / "big.npy", np.zeros((4, 16, 16), np.uint8))  # 16x16: no digits FD, and no mixture's W2
    big = save_student(tmp_path / "big.ckpt", consistency_student(EDMDenoiser(
        build_unet((1, 16, 16), channels=(8, 16), layers_per_block=1), Precond())), "mid-cm")
    cfg = PostTrainConfig(init=big, data=str(tmp_path / "big.npy"), eval_every=1, keep_best=True,
                          out=str(tmp_path / "big"), **FAST)
    with pytest.raises(CMTError, match=r"--keep-best ranks evaluations by digits FD .* makes \(1, 16, 16\) images"):
        post_train(cfg, progress=False)
    assert not (tmp_path / "big").exists()
