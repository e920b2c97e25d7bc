"""CPU threads: each command's share of the CPUs, and results that do not depend on the thread count."""

import threading

import numpy as np
import pytest
import torch

from cmt_pipeline.config import GenerateConfig
from cmt_pipeline.generation import Worker, generate
from cmt_pipeline.stores import read_all
from cmt_pipeline.threads import cgroup_cpu_limit, default_threads, one_thread_per_call, openmp_wait, resolve_threads
from cmt_pipeline.errors import CMTError


def test_cgroup_quota_is_read_from_v2_then_v1(tmp_path):
    v2, quota, period = tmp_path / "cpu.max", tmp_path / "quota", tmp_path / "period"
    v2.write_text("150000 100000\n")
    assert cgroup_cpu_limit(v2, (quota, period)) == 2  # 1.5 CPUs rounds up
    v2.write_text("max 100000\n")
    assert cgroup_cpu_limit(v2, (quota, period)) is None
    v2.unlink()
    quota.write_text("300000\n")
    period.write_text("100000\n")
    assert cgroup_cpu_limit(v2, (quota, period)) == 3
    quota.write_text("-1\n")
    assert cgroup_cpu_limit(v2, (quota, period)) is None
    assert cgroup_cpu_limit(tmp_path / "none", (tmp_path / "a", tmp_path / "b")) is None


def test_openmp_threads_spin_briefly_on_an_idle_machine_and_sleep_on_a_busy_one():
    spin, sleep = {"GOMP_SPINCOUNT": "10000"}, {"OMP_WAIT_POLICY": "PASSIVE"}
    assert openmp_wait({}, load=0.2, cpus=2) == spin
    assert openmp_wait({}, load=1.0, cpus=2) == sleep  # half the cores taken by others
    assert openmp_wait({}, load=6.0, cpus=2) == sleep
    assert openmp_wait({}, load=20.0, cpus=64) == spin  # a big node: most cores free
    assert openmp_wait({"OMP_WAIT_POLICY": "ACTIVE"}, load=6.0, cpus=2) == {}  # the caller's choice stands
    assert openmp_wait({"GOMP_SPINCOUNT": "0"}, load=0.0, cpus=2) == {}


@pytest.mark.parametrize("given", [{}, {"OMP_WAIT_POLICY": "ACTIVE"}])
def test_the_cli_sets_the_wait_before_torch_loads(given):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", "import os, sys, cli; print(os.environ.get('OMP_WAIT_POLICY'), "
                          "os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)"],
                         env={**env, **given}, capture_output=True, text=True, check=True).stdout.split()
    assert out[2] == "False"  # libgomp reads its variables once, when torch loads it
    if given:
        assert out[:2] == ["ACTIVE", "None"]
    else:
        assert out[:2] in (["PASSIVE", "None"], ["None", "10000"])


def test_default_threads_follow_omp_then_the_launcher(monkeypatch):
    monkeypatch.setattr("cmt_pipeline.threads.available_cpus", lambda: 16)
    assert default_threads({}) == 16
    assert default_threads({"OMP_NUM_THREADS": "3", "LOCAL_WORLD_SIZE": "8"}) == 3
    assert default_threads({"LOCAL_WORLD_SIZE": "8"}) == 2
    assert default_threads({"LOCAL_WORLD_SIZE": "32"}) == 1
    assert default_threads({"SLURM_CPUS_PER_TASK": "4"}) == 4
    assert default_threads({"SLURM_CPUS_PER_TASK": "64"}) == 16
    assert resolve_threads(5, {}) == 5
    with pytest.raises(CMTError, match="--num-threads must be positive"):
        resolve_threads(-2, {})
    with pytest.raises(CMTError, match="OMP_NUM_THREADS='two' is not an integer"):
        default_threads({"OMP_NUM_THREADS": "two"})


def test_one_thread_per_call_runs_calls_at_once_with_one_intra_op_thread_each():
    seen, barrier = [], threading.Barrier(2, timeout=30)

    def call(i):
        barrier.wait()  # both calls are in flight together, or this times out
        seen.append(torch.get_num_threads())
        return i * i

    before = torch.get_num_threads()
    with one_thread_per_call(2) as run:
        assert list(run(call, range(4))) == [0, 1, 4, 9]  # in order
    assert seen == [1, 1, 1, 1] and torch.get_num_threads() == before


@pytest.mark.parametrize("teacher", ["gmm:gmm8x8", "builtin"])
def test_generated_bytes_do_not_depend_on_the_thread_count(tmp_path, teacher):
    """A 6-sample batch is where MKL's sgemm rounds differently with 2 threads than with 1 on some processors
    (AMD EPYC): the gmm teacher's (6 x 10) @ (10 x 64) product. The builtin UNet adds convolutions."""
    arrays = []
    for threads in (1, 2, 3):  # gmm: one batch of 8, then one of 6; builtin: 2 + 2 batches of 4, one of 2
        cfg = GenerateConfig(teacher=teacher, num_samples=14, shard_size=8, batch_size=8 if teacher == "gmm:gmm8x8"
                             else 4, steps=4, dtype="float32", device="cpu", format="wds", out=str(tmp_path / f"t{threads}"))
        generate(cfg, Worker(threads=threads), progress=False)
        arrays.append(read_all(cfg.out))
    for other in arrays[1:]:
        for name in ("prior", "traj", "x0"):
            assert np.array_equal(arrays[0][name], other[name]), name
    for t in (2, 3):
        assert (tmp_path / "t1/manifest.json").read_bytes() == (tmp_path / f"t{t}/manifest.json").read_bytes()


def test_every_command_takes_num_threads_and_sizes_torch_with_it(tmp_path):
    import click
    from click.testing import CliRunner

    from cli.main import cli

    ctx = click.Context(cli)
    names = cli.list_commands(ctx)
    assert len(names) >= 10
    for name in names:
        params = {p.name: p for p in cli.get_command(ctx, name).params}
        assert "num_threads" in params, name
    before = torch.get_num_threads()
    try:
        for n in (1, 3):  # the command itself runs (and refuses the missing path) with torch sized first
            result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "nope"), "--num-threads", str(n)])
            assert "does not exist" in result.output and torch.get_num_threads() == n
        result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "nope"), "--num-threads", "0"])
        assert result.exit_code == 2 and "--num-threads" in result.output and "does not exist" not in result.output
    finally:
        torch.set_num_threads(before)


def test_evaluation_samples_batches_one_intra_op_thread_each_in_order():
    """run_sampler (every evaluation's sampling) runs torch's thread count of batches at once, each call on one
    intra-op thread, and returns them in order, bytes independent of the thread count."""
    from cmt_pipeline.sampling import TeacherSampler, run_sampler
    from cmt_pipeline.teachers import load_teacher

    teacher = load_teacher("builtin")
    inner = TeacherSampler(teacher, "dpm3", 4)
    seen = []

    class Recording:
        num_classes, renoise_steps = inner.num_classes, 0

        def __call__(self, x, labels, renoise):
            seen.append((threading.current_thread().name, torch.get_num_threads()))
            return inner(x, labels, renoise)

    prior = np.random.default_rng(0).standard_normal((37, 1, 8, 8)).astype(np.float32) * 80
    labels = np.zeros(37, np.int64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the batches one by one, as a call sees them (more intra-op threads may round else)
        batchwise = torch.cat([inner(torch.from_numpy(prior[b:b + 8]), None, None) for b in range(0, 37, 8)])
        runs = {}
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            seen.clear()
            runs[threads] = run_sampler(Recording(), prior, labels, batch_size=8)
            assert {n for _, n in seen} == {1}, seen  # one intra-op thread per call
            names = {name for name, _ in seen}  # the pool's threads (how many of them run depends on timing)
            assert names == {"MainThread"} if threads == 1 else all(n.startswith("cmt-solve") for n in names), seen
            assert torch.get_num_threads() == threads  # restored
    finally:
        torch.set_num_threads(before)
    for threads in (2, 3):
        assert torch.equal(runs[1], runs[threads])
    assert runs[1].shape == (37, 1, 8, 8) and torch.equal(runs[1], batchwise)  # in order
