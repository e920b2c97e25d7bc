"""Generation across workers, as separate processes: the dataset's bytes do not depend on how many workers made
it, how they were launched (explicit options, Slurm array variables, torchrun), or how often they were killed."""

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from cmt_pipeline.config import GenerateConfig
from cmt_pipeline.generation import generate
from cmt_pipeline.generation.run import PAUSE_VARIABLE
from cmt_pipeline.stores import read_all, verify
from cmt_pipeline.stores.layout import finalize, leftovers

N, SHARD = 150, 8
N_SHARDS = -(-N // SHARD)  # 19, the last one short
FORMATS = ["zarr", "wds"]
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "OMP_NUM_THREADS")


def tree(root):
    """Every file under root, hidden ones included, with its bytes: equal trees = bit-identical datasets."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def clean_env(**extra):
    """No launcher variables from the calling shell; one thread unless a test says otherwise (2 shared cores)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV and not k.startswith("SLURM_")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def config(out, fmt, teacher):
    return dict(teacher=teacher, num_samples=N, shard_size=SHARD, batch_size=8, format=fmt, device="cpu", out=str(out))


def start(out, fmt, *extra, teacher="gmm:gmm8x8", env=None, launcher=()):
    """One `cmt generate-trajectories` process (python -m cli), with its output captured."""
    opts = [f"--{k.replace('_', '-')}={v}" for k, v in config(out, fmt, teacher).items()]
    return subprocess.Popen([sys.executable, *launcher, "-m", "cli", "generate-trajectories", "--quiet", *opts, *extra],
                            env=env or clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(procs):
    for p in procs:
        output = p.communicate(timeout=300)[0]
        assert p.returncode == 0, output


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted single-worker run per format, in its own process, with two threads (the workers
    compared against it use one: the bytes must not depend on the thread count either)."""
    base = tmp_path_factory.mktemp("reference")
    finish([start(base / fmt, fmt, "--num-threads", "2") for fmt in FORMATS])
    return {fmt: tree(base / fmt) for fmt in FORMATS}


def assert_same_as_reference(out, expected):
    got = tree(out)
    assert sorted(got) == sorted(expected), sorted(set(got) ^ set(expected))
    differing = [name for name in expected if got[name] != expected[name]]
    assert not differing, differing
    assert verify(out).ready


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_one_two_and_three_workers_write_bit_identical_datasets(tmp_path, reference, fmt):
    assert any(name.startswith("done/") for name in reference[fmt]) and len(reference[fmt]) > 20
    runs = {  # the 1-worker run is the reference; explicit --worker-index runs are in the kill test below
        # 3 workers as a Slurm array --array=4-6 (TASK_MIN offset), one CPU per task
        "slurm3": [start(tmp_path / "slurm3", fmt, env=clean_env(
            SLURM_ARRAY_TASK_ID=str(4 + i), SLURM_ARRAY_TASK_MIN="4", SLURM_ARRAY_TASK_COUNT="3",
            SLURM_CPUS_PER_TASK="1")) for i in range(3)],
        # 2 workers under torchrun (RANK/WORLD_SIZE/LOCAL_WORLD_SIZE: one thread each on 2 cores)
        "torchrun2": [start(tmp_path / "torchrun2", fmt, launcher=(
            "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"))],
    }
    for procs in runs.values():
        finish(procs)
    for name in runs:
        assert_same_as_reference(tmp_path / name, reference[fmt])


def markers(out):
    d = out / "done"
    return len(list(d.glob("[0-9]*.json"))) if d.exists() else 0


KILL_TEACHER = "gmm:gmm2d"  # the cheapest teacher to start: this test starts many processes


def run_and_kill(out, fmt, workers, rng):
    """Start `workers` processes and SIGKILL them at a random moment of the run: each holds still once it has
    handed a random number of shards to its writer (generation's test hook), and the kill comes once a random
    number of new shards is done, plus a random few milliseconds, while the writers may still be committing the
    rest (timing by progress and the hook, not by the clock: on a machine at any load the kill lands mid-run).
    Returns (processes the kill hit, markers present at the kill)."""
    base = markers(out)
    # shards each worker hands over first: at most half of what is left, so no run finishes the set (3 attempts)
    hold = 1 + rng.randrange(max(1, (N_SHARDS - base) // (2 * workers)))
    env = clean_env(**{PAUSE_VARIABLE: str(hold)})
    if workers == 1:
        procs = [start(out, fmt, teacher=KILL_TEACHER, env=env)]
    else:
        procs = [start(out, fmt, "--worker-index", str(i), "--num-workers", str(workers), "--num-threads", "1",
                       teacher=KILL_TEACHER, env=env) for i in range(workers)]
    # at least one worker owns `hold` of the shards left and commits them before it holds: the kill's target
    target, hung = base + rng.randrange(0, hold + 1), time.monotonic() + 900  # the clock: a guard against a hang
    while markers(out) < target:
        # a worker owning fewer than `hold` of the shards left may finish its share; one that holds cannot end
        assert any(p.poll() is None for p in procs) and time.monotonic() < hung, [p.poll() for p in procs]
        time.sleep(0.002)
    time.sleep(rng.uniform(0, 0.03))
    at_kill = markers(out)
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
    for p in procs:
        p.communicate(timeout=60)
    return sum(p.returncode == -signal.SIGKILL for p in procs), at_kill


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_dataset(tmp_path, fmt):
    generate(GenerateConfig(**config(tmp_path / "reference", fmt, KILL_TEACHER)), progress=False)
    reference = tree(tmp_path / "reference")
    rng = random.Random(f"kill-{fmt}")
    out = tmp_path / "run"
    # alternate one and two workers: a resume need not use the killed run's world size
    kills = [run_and_kill(out, fmt, workers=1 + attempt % 2, rng=rng) for attempt in range(3)]
    assert all(hit >= 1 for hit, _ in kills), kills  # every kill really interrupted running generation
    assert any(0 < done < N_SHARDS for _, done in kills), kills  # ... with the dataset part done
    finish([start(out, fmt, teacher=KILL_TEACHER)])  # rerun the same command until it completes: once is enough
    assert_same_as_reference(out, reference)  # bit-identical, and no temporary files left (no extra paths)
    index = read_all(out)["index"]
    assert np.array_equal(index, np.arange(N))  # nothing missing, no duplicates


def shard_file(out, fmt, k):
    return out / "data.zarr/traj/c" / str(k) / "0/0/0/0" if fmt == "zarr" else out / "shards" / f"shard-{k:06d}.tar"


def damage(out, fmt):
    """Plant, by hand, each state a killed (or damaged) run can leave behind."""
    tmp = out / ".tmp" / "shard-000004-4242-0badf00d"
    tmp.mkdir(parents=True)
    (tmp / "half-written").write_bytes(b"\0" * 100)  # a write interrupted inside .tmp
    (out / "done" / ".000005.json.tmp-1234abcd").write_text("{")  # an atomic write interrupted beside its target
    (out / "shards" / ".shard-000003.tar.tmp-0badf00d" if fmt == "wds" else tmp / "x").write_bytes(b"partial")
    (out / "manifest.json").unlink()
    # shard 2: a torn file and no marker (zarr would otherwise try to read-modify-write it and fail)
    torn = shard_file(out, fmt, 2)
    torn.write_bytes(torn.read_bytes()[:300])
    (out / "done" / "000002.json").unlink()
    # shard 6: killed between publishing its files and writing its marker
    (out / "done" / "000006.json").unlink()
    # shard 7: its file was truncated after its marker was written (the cheap size check at resume sees it)
    cut = shard_file(out, fmt, 7)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_resume_rewrites_torn_shards_and_clears_debris(tmp_path, reference, fmt):
    out = tmp_path / fmt
    (tmp_path / "ref").mkdir()
    for name, data in reference[fmt].items():
        (tmp_path / "ref" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "ref" / name).write_bytes(data)
    shutil.copytree(tmp_path / "ref", out)
    damage(out, fmt)
    stats = generate(GenerateConfig(**config(out, fmt, "gmm:gmm8x8")), progress=False)
    assert stats["complete"] and stats["shards_written"] == 3, stats  # shards 2, 6 and the truncated 7
    assert_same_as_reference(out, reference[fmt])


def test_workers_finishing_together_all_finalize_without_tripping_on_each_other(tmp_path):
    """Every worker finalizes when it ends, and balanced workers end together: each one's clean-up of .tmp must
    not break another's manifest write (threads here: the file-system race is the same as between processes)."""
    out = tmp_path / "d"
    generate(GenerateConfig(**config(out, "wds", KILL_TEACHER)), progress=False)
    manifest = (out / "manifest.json").read_bytes()
    errors = []

    def finalize_once():
        try:
            finalize(out)
        except Exception as e:  # noqa: BLE001  (collect whatever a race raises)
            errors.append(repr(e))

    for _ in range(20):
        threads = [threading.Thread(target=finalize_once) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    assert (out / "manifest.json").read_bytes() == manifest and not leftovers(out)
