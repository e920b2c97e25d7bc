"""The shared training loop: EMA math, the data seam, exact resume, atomic checkpoints, checkpoint errors,
and a 2-process CPU run under `accelerate launch`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cmt_pipeline import devices
from cmt_pipeline.config import PretrainConfig, TrainConfig
from cmt_pipeline.models.io import load_model, model_from_checkpoint
from cmt_pipeline.training import EMA, TensorSource, ema_decay, train
from cmt_pipeline.training.checkpoint import resolve_resume
from cmt_pipeline.training.data import batch_stream
from cmt_pipeline.training.loop import LoopState, due
from cmt_pipeline.training.stage import fresh_network
from cmt_pipeline.errors import CMTError


# ---- periodic callbacks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("at_end, main, fired", [(True, True, [3, 6, 7]), (False, True, [3, 6]), (True, False, [])])
def test_periodic_trigger_steps(at_end, main, fired):
    acc = SimpleNamespace(is_main_process=main)
    state = lambda step: LoopState(step, 7, acc, None, None, Path("."))
    assert [k for k in range(1, 8) if due(state(k), 3, at_end)] == fired
    assert [k for k in range(1, 8) if due(state(k), 0, at_end)] == ([7] if at_end and main else [])


# ---- EMA ------------------------------------------------------------------------------------------------

def test_ema_decay_from_halflife():
    assert ema_decay(0.999) == 0.999
    d = ema_decay(0.999, halflife=1000, batch_size=100)  # half-life = 10 steps of 100 samples
    assert d**10 == pytest.approx(0.5)
    with pytest.raises(ValueError):
        ema_decay(1.0)

def test_ema_rampup_is_edms_per_step_decay():
    halflife, batch, ratio = 500_000.0, 512, 0.05  # EDM's defaults: 500 kimg, ema_rampup_ratio 0.05
    for step in (1, 2, 10, 1000, 20_000, 40_000):
        cur_nimg = (step - 1) * batch  # EDM's images before this step's update
        beta = 0.5 ** (batch / max(min(halflife, cur_nimg * ratio), 1e-8))
        assert ema_decay(0.999, halflife, batch, ratio, step) == pytest.approx(beta, rel=1e-12), step
    assert ema_decay(0.999, halflife, batch, ratio, 1) == 0  # step 1 copies the weights
    assert ema_decay(0.999, halflife, batch, ratio, 40_000) == ema_decay(0.999, halflife, batch)  # ramped up
    assert ema_decay(0.999, 0, batch, ratio, 5) == 0.999  # no half-life: the fixed decay
    assert ema_decay(0.999, halflife, batch, 0.0, 5) == ema_decay(0.999, halflife, batch)  # off


def test_ema_rampup_needs_a_halflife():
    with pytest.raises(CMTError, match="--ema-rampup ramps the EMA half-life up to --ema-halflife, which is not set"):
        PretrainConfig(ema_rampup=0.05)
    with pytest.raises(CMTError, match="--ema-rampup must be >= 0"):
        TrainConfig(ema_rampup=-1, ema_halflife=100)
    assert TrainConfig(ema_rampup=0.05, ema_halflife=1000).ema_rampup == 0.05


def test_ema_update_matches_closed_form():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    p0 = [p.detach().clone() for p in model.parameters()]
    ema = EMA(model)
    with torch.no_grad():  # the model jumps to new weights and stays there
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(3.0)
    for _ in range(5):
        ema.update(model, 0.9)
    for e, a, p in zip(ema.model.parameters(), p0, model.parameters()):
        torch.testing.assert_close(e, p + 0.9**5 * (a - p))  # ema_n = p1 + d^n (p0 - p1)
        assert not e.requires_grad
    assert torch.equal(ema.model[1].running_mean, model[1].running_mean)  # buffers are copied, not averaged


# ---- data seam ------------------------------------------------------------------------------------------

def test_tensor_source_is_stateless_epochs_and_rank_split():
    x = torch.arange(10)
    src = TensorSource({"x": x}, batch_size=4, seed=3)
    stream = src.batches(0)
    first = [next(stream)["x"] for _ in range(5)]  # 20 samples = 2 epochs of 10
    assert sorted(torch.cat(first[:2] + [first[2][:2]]).tolist()) == list(range(10))  # epoch 1: each once
    assert torch.equal(next(src.batches(3))["x"], first[3])  # batch 4 from a fresh stream started at 3
    halves = [next(src.batches(1, rank, 2))["x"] for rank in (0, 1)]
    assert torch.equal(torch.cat(halves), first[1])  # two processes split the same global batch
    assert not torch.equal(next(TensorSource({"x": x}, 4, seed=4).batches(0))["x"], first[0])
    with pytest.raises(CMTError, match="does not split"):
        next(src.batches(0, 0, 3))


def test_iterable_stream_cycles_and_skips():
    data = [{"i": torch.tensor(i)} for i in range(3)]
    got = [int(b["i"]) for _, b in zip(range(5), batch_stream(data, 4, 0, 1))]
    assert got == [1, 2, 0, 1, 2]  # batches 5.. of the cycled list
    with pytest.raises(CMTError, match="no batches"):
        next(batch_stream([], 0, 0, 1))


# ---- a tiny generic model and objective -------------------------------------------------------------------

def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.SiLU(), torch.nn.Dropout(0.3),
                               torch.nn.Conv2d(4, 1, 3, padding=1))


def denoise_loss(model, batch, step):
    """Uses the global RNG (noise and dropout), as real objectives do."""
    x = batch["image"]
    pred = model(x + torch.randn_like(x))
    loss = ((pred - x) ** 2).mean()
    return loss, {"abs": (pred - x).abs().mean()}


IMAGES = torch.randn(24, 1, 4, 4, generator=torch.Generator().manual_seed(1))


def cfg_for(out, **kw):
    base = dict(out=str(out), steps=8, batch_size=8, optimizer="adam", lr=1e-2, lr_schedule="linear",
                warmup_steps=2, grad_clip=1.0, ema_decay=0.9, log_every=1, checkpoint_every=3,
                keep_checkpoints=5, tensorboard=False, device="cpu", seed=0)
    return TrainConfig(**{**base, **kw})


def run(out, data=None, resume=None, callbacks=(), **kw):
    data = data or TensorSource({"image": IMAGES}, 8, seed=0)
    return train(tiny_model(), denoise_loss, data, cfg_for(out, **kw), kind="test", resume=resume,
                 callbacks=callbacks, progress=False)


def records(out) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (Path(out) / "log.jsonl").read_text().splitlines())}


def losses(out) -> dict[int, float]:
    return {k: r["loss"] for k, r in records(out).items()}


class Stop(Exception):
    pass


def stop_at(k):
    def cb(state):
        if state.step == k:
            raise Stop
    return cb


@pytest.mark.parametrize("kind", ["source", "iterable", "ema-rampup"])
def test_resume_reproduces_uninterrupted_run(tmp_path, kind):
    """Stop after step 4 (last checkpoint at 3), resume: steps 4-8 match an uninterrupted run exactly (EDM's EMA
    ramp-up included: its decay depends on the step alone)."""
    ema = dict(ema_halflife=16.0, ema_rampup=0.5) if kind == "ema-rampup" else {}

    def data():
        if kind != "iterable":
            return TensorSource({"image": IMAGES}, 8, seed=0)
        return [{"image": IMAGES[i:i + 8]} for i in (0, 8, 16)]

    run(tmp_path / "a", data(), **ema)
    with pytest.raises(Stop):
        run(tmp_path / "b", data(), callbacks=[stop_at(4)], **ema)
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text().strip() == "step-0000003"
    assert max(losses(tmp_path / "b")) == 4
    run(tmp_path / "b", data(), resume="latest", **ema)
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(b) == list(range(1, 9))  # the dead run's step-4 line was replaced, not duplicated
    for k in range(4, 9):
        assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-7), k
    ca, cb = load_model(tmp_path / "a" / "model.ckpt"), load_model(tmp_path / "b" / "model.ckpt")
    for key in ("state_dict", "ema_state_dict"):
        for name, t in ca[key].items():
            torch.testing.assert_close(cb[key][name], t, rtol=1e-6, atol=1e-7)
    # and the match is not trivial: another seed gives other losses after the resume point
    run(tmp_path / "c", data(), seed=1, **ema)
    assert all(losses(tmp_path / "c")[k] != a[k] for k in range(4, 9))


def test_grad_accumulation_matches_full_batch(tmp_path):
    """With a noise-free objective, 2 micro-batches of 4 must give the same updates as one batch of 8."""
    def plain_mse(model, batch, step):
        return ((model(batch["image"]) - batch["image"]) ** 2).mean(), {}

    out = {}
    for accum in (1, 2):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(4, 1, 1))
        train(model, plain_mse, TensorSource({"image": IMAGES}, 8, seed=0), cfg_for(tmp_path / str(accum),
              grad_accum=accum, steps=5), kind="test", progress=False)
        out[accum] = records(tmp_path / str(accum))
    for k in range(1, 6):
        for key in ("loss", "grad_norm"):  # the norm catches a missing 1/accum, which Adam itself would hide
            assert out[2][k][key] == pytest.approx(out[1][k][key], rel=1e-5), (k, key)
    assert out[1][5]["loss"] < out[1][1]["loss"]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_is_applied(tmp_path, precision, monkeypatch):
    """Runs of different precisions in one process (the loop's own autocast, not accelerate's singleton)."""
    monkeypatch.setattr(devices, "cpu_bf16_fast", lambda: True)  # whatever this CPU is
    run(tmp_path / "fp32", steps=2)
    run(tmp_path / precision, steps=2, mixed_precision=precision)
    a, b = losses(tmp_path / "fp32"), losses(tmp_path / precision)
    assert b[2] == pytest.approx(a[2], rel=1e-2) and b[2] != a[2]  # close, but computed in 16 bits
    scaler = json.loads((tmp_path / precision / "checkpoints" / "step-0000002" / "state.json").read_text())["scaler"]
    assert bool(scaler) == (precision == "fp16")  # fp16's loss scale is checkpointed with the rest


def test_bf16_where_it_is_slower_than_float32_trains_in_float32_with_a_note(tmp_path, monkeypatch, capsys):
    """Where bf16 is slower than float32 (no AMX, not an AMD avx512_bf16 core), the run is float32's, bit for bit,
    and says so once."""
    monkeypatch.setattr(devices, "cpu_bf16_fast", lambda: False)
    run(tmp_path / "fp32", steps=2)
    assert "bf16" not in capsys.readouterr().err
    run(tmp_path / "bf16", steps=2, mixed_precision="bf16")
    assert capsys.readouterr().err.count("mixed_precision bf16 trains in float32 here") == 1
    assert losses(tmp_path / "bf16") == losses(tmp_path / "fp32")
    assert devices.autocast_precision("bf16", torch.device("cuda")) == "bf16"  # a GPU's bf16 is its own


@pytest.mark.parametrize("caps, fast", [
    ({"cpu_name": "AMD EPYC 9R14", "avx512_bf16": True, "amx_bf16": False}, True),  # measured 1.5x
    ({"cpu_name": "Intel Xeon", "avx512_bf16": True, "amx_bf16": False}, False),  # measured 0.72x
    ({"cpu_name": "Intel Xeon", "avx512_bf16": True, "amx_bf16": True}, True),
    ({"cpu_name": "AMD Ryzen 7 5800X", "avx512_bf16": False, "amx_bf16": False}, False),  # emulated
    ({}, False)])  # a torch without get_capabilities' fields
def test_bf16_is_taken_only_where_it_measured_faster(monkeypatch, caps, fast):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps, raising=False)
    assert devices.cpu_bf16_fast() is fast


def test_tensorboard_gets_the_logged_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(tmp_path, steps=3, tensorboard=True)
    events = EventAccumulator(str(next((tmp_path / "tensorboard").rglob("events.out.tfevents.*")).parent)).Reload()
    assert {"loss", "abs", "lr", "grad_norm", "data_wait"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3]
    assert events.Scalars("loss")[-1].value == pytest.approx(losses(tmp_path)[3])


def test_run_folder_guards(tmp_path):
    state = run(tmp_path, steps=3)
    assert state.step == 3 and (tmp_path / "model.ckpt").exists()
    rec = json.loads((tmp_path / "config.json").read_text())
    assert rec["kind"] == "test" and rec["config"]["lr"] == 1e-2
    with pytest.raises(CMTError, match="already holds"):
        run(tmp_path, steps=3)
    with pytest.raises(CMTError, match=r"different settings \['lr'\]"):
        run(tmp_path, steps=3, lr=1e-3, resume="latest")
    run(tmp_path, steps=3, resume="latest", log_every=2)  # runtime-only settings may change; nothing left to do
    rec["config"].pop("ema_rampup")  # a run begun before the option existed ran with its default (off)
    (tmp_path / "config.json").write_text(json.dumps(rec))
    run(tmp_path, steps=3, resume="latest")
    with pytest.raises(CMTError, match="no checkpoint"):
        run(tmp_path / "new", resume="latest")
    with pytest.raises(CMTError, match="not a training checkpoint"):
        run(tmp_path / "new2", resume=str(tmp_path))


# ---- atomic checkpoints ------------------------------------------------------------------------------------

def test_latest_pointer_survives_crash_mid_save(tmp_path, monkeypatch):
    from cmt_pipeline.training import checkpoint

    real = checkpoint.write_state

    def crashing(folder, *args):
        if "step-0000006" in str(folder):
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "model.safetensors").write_bytes(b"half-writ")
            raise OSError("disk full")
        return real(folder, *args)

    monkeypatch.setattr(checkpoint, "write_state", crashing)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, keep_checkpoints=1)
    ck = tmp_path / "checkpoints"
    assert (ck / "latest").read_text() == "step-0000003\n"
    assert sorted(p.name for p in ck.iterdir()) == [".tmp-step-0000006", "latest", "step-0000003"]
    assert resolve_resume("latest", ck) == ck / "step-0000003"
    monkeypatch.setattr(checkpoint, "write_state", real)
    run(tmp_path, resume="latest", keep_checkpoints=1)
    assert sorted(p.name for p in ck.iterdir()) == ["latest", "step-0000008"]  # tmp replaced, old pruned
    assert (ck / "latest").read_text() == "step-0000008\n"


def test_damaged_training_checkpoint_gives_clear_error(tmp_path):
    run(tmp_path, steps=3)
    (tmp_path / "checkpoints" / "step-0000003" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CMTError, match="cannot resume"):
        run(tmp_path, steps=3, resume="latest")


# ---- model.ckpt --------------------------------------------------------------------------------------------

def test_model_checkpoint_errors(tmp_path):
    run(tmp_path, steps=2)
    good = tmp_path / "model.ckpt"
    ckpt = load_model(good, kind="test")
    assert ckpt["step"] == 2 and ckpt["network"] is None and ckpt["config"]["steps"] == 2
    with pytest.raises(CMTError, match="'test' checkpoint, but 'mid-train' is needed"):
        load_model(good, kind="mid-train")
    with pytest.raises(CMTError, match="does not say how to rebuild"):
        model_from_checkpoint(ckpt)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:2000])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(os.urandom(4096))
    for bad in (truncated, garbage):
        with pytest.raises(CMTError, match="cannot read checkpoint"):
            load_model(bad)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CMTError, match="not a cmt model checkpoint"):
        load_model(foreign)
    with pytest.raises(CMTError, match="does not exist"):
        load_model(tmp_path / "missing.ckpt")


# ---- two processes ------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_cpu_run_trains_and_checkpoints(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` with --device cpu: DDP over gloo, no code change."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "cli", "pretrain", "--device", "cpu", "--out", str(out),
           "--steps", "4", "--batch-size", "8", "--grad-accum", "2", "--channels", "8,16", "--layers-per-block", "1",
           "--checkpoint-every", "2", "--log-every", "1", "--sample-steps", "2", "--no-tensorboard", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["num_processes"] == 2
    step = out / "checkpoints" / "step-0000004"
    assert (out / "checkpoints" / "latest").read_text().strip() == step.name
    assert {p.name for p in step.iterdir()} == {"model.safetensors", "ema.safetensors", "optimizer.pt", "state.json"}  # written once, by the main process
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]  # one log line per step: only rank 0 writes
    ckpt = load_model(out / "model.ckpt", kind="pretrain")
    assert ckpt["step"] == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    init = fresh_network((1, 8, 8), 0, channels=[8, 16], layers_per_block=1).state_dict()  # pretrain's init
    assert any(not torch.allclose(ckpt["state_dict"][k], v) for k, v in init.items())  # it trained
