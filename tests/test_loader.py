"""The training data path that feeds a GPU: batches gathered in worker processes (data.Workers) and copied to the
device one batch ahead (data.device_batches) are exactly the batches the training process would make itself,
for every step, resume point and process split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cmt_pipeline.config import GenerateConfig, TrainConfig
from cmt_pipeline.generation import generate
from cmt_pipeline.training.data import TensorSource, Workers, device_batches
from cmt_pipeline.training.loop import train
from cmt_pipeline.training.trajectories import trajectory_source
from cmt_pipeline.errors import CMTError

TRAJ = torch.randn(300, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0)).half()
LABELS = torch.arange(300)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


@pytest.mark.parametrize("start,rank,world", [(0, 0, 1), (7, 1, 2), (30, 3, 4)])
def test_worker_batches_are_the_sources_batches(start, rank, world):
    source = TensorSource({"traj": TRAJ, "labels": LABELS}, 32, seed=5)
    got, want = Workers(source, 2).batches(start, rank, world), source.batches(start, rank, world)
    for _ in range(25):  # past an epoch boundary (300 samples, 32 a step)
        a = next(got)
        assert same(a, next(want)) and a["traj"].is_shared()  # gathered in a worker, sent through shared memory
        assert a["traj"].is_pinned() == torch.cuda.is_available()


class Failing(TensorSource):
    def batch(self, step, rank=0, world=1):
        if step == 3:
            raise CMTError("step 3 is unreadable; fix it")
        return super().batch(step, rank, world)


def test_a_workers_error_is_raised_as_itself():
    stream = Workers(Failing({"traj": TRAJ}, 32), 2).batches(0)
    next(stream), next(stream)
    with pytest.raises(CMTError) as err:
        next(stream)
    assert str(err.value) == "step 3 is unreadable; fix it"
    with pytest.raises(CMTError, match="does not split over 3 processes"):
        next(Workers(TensorSource({"traj": TRAJ}, 32), 2).batches(0, 0, 3))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_device_batches_keep_order_and_values(device):
    source = TensorSource({"traj": TRAJ, "labels": LABELS}, 16, seed=1)
    moved, plain = device_batches(Workers(source, 1).batches(0), torch.device(device)), source.batches(0)
    for _ in range(12):
        a, b = next(moved), next(plain)
        assert all(v.device.type == device for v in a.values())
        assert same({k: v.cpu() for k, v in a.items()}, b)


def test_store_batches_from_workers_match_the_training_process(tmp_path):
    store = tmp_path / "store"
    generate(GenerateConfig(teacher="gmm:gmm8x8", num_samples=128, shard_size=64, batch_size=64, device="cpu",
                            out=str(store)), progress=False)
    inline, _ = trajectory_source(store, 16, seed=3, holdout=32, workers=0)
    workers, _ = trajectory_source(store, 16, seed=3, holdout=32, workers=2)
    for start in (0, 5):
        a, b = inline.batches(start), workers.batches(start)
        assert all(same(next(a), next(b)) for _ in range(8))


def test_training_from_workers_gives_the_same_losses(tmp_path):
    """The loop's losses do not depend on where the batches were gathered."""
    def loss(model, batch, step):
        x = batch["traj"].float().flatten(0, 1)
        return ((model(x + torch.randn_like(x)) - x) ** 2).mean(), {}

    out = {}
    for workers in (0, 2):
        torch.manual_seed(0)
        model = torch.nn.Conv2d(3, 3, 3, padding=1)
        cfg = TrainConfig(out=str(tmp_path / str(workers)), steps=6, batch_size=8, log_every=1, checkpoint_every=100,
                          tensorboard=False, device="cpu", seed=0)
        train(model, loss, Workers(TensorSource({"traj": TRAJ}, 8, seed=2), workers), cfg, kind="test",
              progress=False)
        out[workers] = [json.loads(r)["loss"] for r in (Path(cfg.out) / "log.jsonl").read_text().splitlines()]
    assert out[0] == out[2] and len(out[0]) == 6


def test_workers_only_when_a_gpu_trains_and_within_this_processs_cpu_share(monkeypatch):
    from cmt_pipeline.training import trajectories

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trajectories.loader_workers() == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert trajectories.loader_workers() == 2  # one CPU drives the GPU
    monkeypatch.setenv("OMP_NUM_THREADS", "16")
    assert trajectories.loader_workers() == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert trajectories.loader_workers() == 0
