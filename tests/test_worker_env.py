"""Worker identity and CPU share from the launchers' environments: torchrun/accelerate, Slurm arrays, Slurm tasks."""

import pytest

from cmt_pipeline.generation import Worker, worker_from_env
from cmt_pipeline.threads import available_cpus
from cmt_pipeline.errors import CMTError

CPUS = available_cpus()


def ident(env, index=None, count=None):
    w = worker_from_env(index, count, env=env)
    return w.index, w.count, w.local_rank, w.source


def test_single_process_without_a_launcher():
    assert ident({}) == (0, 1, 0, "single")
    assert worker_from_env(env={}).threads == CPUS  # every CPU this process may use
    assert worker_from_env(env={"OMP_NUM_THREADS": "3"}).threads == 3


def test_torchrun_and_accelerate():
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    assert ident(env) == (5, 8, 1, "torchrun")
    assert worker_from_env(env=env).threads == max(1, CPUS // 4)


def test_slurm_array_with_min_offset_and_step():
    env = {"SLURM_ARRAY_TASK_ID": "13", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert ident(env) == (3, 4, 0, "slurm-array")
    stepped = {"SLURM_ARRAY_TASK_ID": "14", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_STEP": "2",
               "SLURM_ARRAY_TASK_COUNT": "3"}
    assert ident(stepped)[:2] == (2, 3)
    # a single-task array job also carries SLURM_PROCID=0/SLURM_NTASKS=1: still just the array position
    assert ident({**env, "SLURM_PROCID": "0", "SLURM_NTASKS": "1"})[:2] == (3, 4)
    assert worker_from_env(env={**env, "SLURM_CPUS_PER_TASK": "1"}).threads == 1


def test_every_array_position_gets_a_distinct_index():
    seen = {ident({"SLURM_ARRAY_TASK_ID": str(t), "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "5"})[0]
            for t in range(1, 6)}
    assert seen == set(range(5))


def test_slurm_tasks_and_arrays_of_multi_task_jobs():
    assert ident({"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1"}) == (3, 4, 1, "slurm")
    both = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_PROCID": "1", "SLURM_NTASKS": "4"}
    assert ident(both)[:2] == (2 * 4 + 1, 12)
    # torchrun inside one task of an array: the array position is the outer rank
    tr = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "RANK": "1", "WORLD_SIZE": "2"}
    assert ident(tr)[:3] == (3, 4, 0)
    all_ranks = {ident({**tr, "SLURM_ARRAY_TASK_ID": str(a), "RANK": str(r)})[0] for a in range(2) for r in range(2)}
    assert all_ranks == {0, 1, 2, 3}


def test_explicit_options_win_and_are_checked():
    assert ident({"SLURM_PROCID": "3", "SLURM_NTASKS": "4"}, 1, 3) == (1, 3, 0, "explicit")
    assert worker_from_env(0, 2, env={}, num_threads=3).threads == 3
    with pytest.raises(CMTError, match="go together"):
        worker_from_env(1, None, env={})
    with pytest.raises(CMTError, match="go together"):
        worker_from_env(None, 4, env={})
    with pytest.raises(CMTError, match=r"outside 0\.\.2.*--worker-index"):
        worker_from_env(3, 3, env={})
    with pytest.raises(CMTError, match="outside"):
        worker_from_env(-1, 3, env={})
    with pytest.raises(CMTError, match="outside"):
        worker_from_env(0, 0, env={})
    with pytest.raises(CMTError, match="WORLD_SIZE=2"):
        worker_from_env(0, 2, env={"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(CMTError, match="--num-threads must be positive"):
        worker_from_env(env={}, num_threads=0)


def test_inconsistent_launcher_environments_are_refused():
    with pytest.raises(CMTError, match="RANK='x'"):
        worker_from_env(env={"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(CMTError, match="outside.*torchrun"):
        worker_from_env(env={"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(CMTError, match="evenly spaced"):  # an id list like --array=1,5,7
        worker_from_env(env={"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "3"})


def test_ownership_partitions_the_shards():
    for count in (1, 2, 3, 7):
        owners = [[w for w in range(count) if Worker(w, count).owns(k)] for k in range(20)]
        assert all(len(o) == 1 for o in owners)


def test_each_local_worker_gets_its_own_gpu(monkeypatch):
    """LOCAL_RANK picks the GPU; with one visible GPU per task (Slurm --gpus-per-task) every task uses cuda:0."""
    import torch

    from cmt_pipeline.generation import run

    monkeypatch.setattr(run, "resolve_device", lambda spec: torch.device(spec))
    for visible, local, expected in [(8, 3, 3), (1, 3, 0), (4, 5, 1)]:
        monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
        assert run.worker_device("cuda", Worker(0, 1, local)) == torch.device("cuda", expected)
    assert run.worker_device("cuda:2", Worker(0, 1, 3)) == torch.device("cuda", 2)  # explicit wins
    assert run.worker_device("cpu", Worker(0, 1, 3)) == torch.device("cpu")
