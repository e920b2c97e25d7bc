"""The shard writer (generation/writer.py): its zarr encoder writes exactly zarr's bytes; its failures are one line
and leave a store that resumes byte-identically; it never outlives the generator; threads solve across shards."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from cmt_pipeline.config import GenerateConfig
from cmt_pipeline.generation import Worker, generate
from cmt_pipeline.errors import CMTError

from cmt_pipeline.stores import WRITERS
from cmt_pipeline.stores.layout import ARRAYS, STORE_VERSION, claim_plan, shard_range
from cmt_pipeline.stores.zarr_store import GROUP, shard_key


def zarr_encoded(root, plan, k, arrays) -> dict[str, bytes]:
    """Shard k as zarr itself writes it: into a fresh copy of each array (write_empty_chunks on, as zarr 3.1's
    sharding codec reads only the global setting)."""
    start, stop = shard_range(plan, k)
    out = {}
    for name in ARRAYS:
        copy = root / "ref" / str(k) / name
        copy.mkdir(parents=True)
        (copy / "zarr.json").write_bytes((root / GROUP / name / "zarr.json").read_bytes())
        with zarr.config.set({"array.write_empty_chunks": True}):
            zarr.open_array(zarr.storage.LocalStore(copy), mode="r+")[start:stop] = arrays[name]
        key = shard_key(plan, name, k)
        out[key] = (copy / key.split("/", 2)[2]).read_bytes()
    return out


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("shape, shard_size", [((1, 8, 8), 48), ((3, 32, 32), 4)])
def test_shard_files_are_byte_identical_to_zarrs_encoding(tmp_path, dtype, shape, shard_size):
    """Full shards, the short last one, an all-NaN chunk, inf and NaN mixed in, and several encode threads."""
    rng = np.random.default_rng(0)
    n = 2 * shard_size + shard_size // 3 + 1  # two full shards, one short one
    plan = {"store_version": STORE_VERSION, "format": "zarr", "num_samples": n, "shard_size": shard_size,
            "shape": list(shape), "num_states": 3, "dtype": dtype}
    claim_plan(tmp_path, plan)
    writer = WRITERS["zarr"](tmp_path, plan, threads=3)
    writer.prepare()
    for k in range(3):
        a, b = shard_range(plan, k)
        arrays = {"prior": rng.standard_normal((b - a, *shape)).astype(np.float32),
                  "traj": (80 * rng.standard_normal((b - a, 3, *shape))).astype(dtype),
                  "x0": rng.standard_normal((b - a, *shape)).astype(dtype),
                  "labels": rng.integers(-1, 10, b - a), "index": np.arange(a, b)}
        if k == 1:  # non-finite: a whole sample NaN (an all-fill chunk for one-sample chunks), an inf, a NaN
            arrays["traj"][0] = np.nan
            arrays["x0"][1, 0, 0, 0], arrays["prior"][2, 0, 0, 0] = np.inf, np.nan
        files = writer.write_shard(k, arrays)
        expected = zarr_encoded(tmp_path, plan, k, arrays)
        assert {key: f.read_bytes() for key, f in files.items()} == expected


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def config(out, **kw) -> GenerateConfig:
    return GenerateConfig(**{"teacher": "gmm:gmm8x8", "num_samples": 40, "shard_size": 8, "batch_size": 4,
                             "steps": 4, "device": "cpu", "out": str(out), **kw})


@pytest.mark.parametrize("fmt", ["zarr", "wds"])
def test_a_dead_writer_is_one_line_and_the_rerun_is_byte_identical(tmp_path, fmt, monkeypatch):
    """The writer process dies (as if killed) committing its third shard: the generator stops with one line
    naming the fix, and the rerun finishes the store byte-identically to an uninterrupted run."""
    from cmt_pipeline.generation import writer

    real, calls = writer.commit_shard, []

    def dies(*args):
        calls.append(1)
        if len(calls) == 3:
            os._exit(9)
        real(*args)

    monkeypatch.setattr(writer, "commit_shard", dies)  # the forked writer inherits it
    with pytest.raises(CMTError, match=r"^the shard writer process died \(exit code 9\); rerun the same command"):
        generate(config(tmp_path / "run", format=fmt), progress=False)
    assert not (tmp_path / "run" / "manifest.json").exists()
    monkeypatch.undo()
    generate(config(tmp_path / "run", format=fmt), progress=False)
    generate(config(tmp_path / "clean", format=fmt), progress=False)
    assert tree(tmp_path / "run") == tree(tmp_path / "clean")


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads the process tree from Linux's /proc")
def test_killing_the_generator_kills_its_writer(tmp_path):
    out = tmp_path / "d"
    p = subprocess.Popen([sys.executable, "-m", "cli", "generate-trajectories", "--teacher", "gmm:gmm8x8",
                          "--num-samples", "20000", "--shard-size", "500", "--batch-size", "250", "--out", str(out),
                          "--device", "cpu", "--quiet"], stderr=subprocess.PIPE)
    while p.poll() is None and not (out / "done").exists():  # until the writer has committed a shard
        time.sleep(0.05)
    writers = children(p.pid)
    assert writers and p.poll() is None, p.stderr.read()
    p.send_signal(signal.SIGKILL)
    p.wait()
    while any(alive(w) for w in writers):  # the kernel kills it at once (PR_SET_PDEATHSIG); this waits for that
        time.sleep(0.05)


def test_threads_solve_batches_of_different_shards_at_once(tmp_path, monkeypatch):
    """One batch per shard and 2 threads: two shards' batches are solved together (else the barrier breaks)."""
    from cmt_pipeline.generation import run

    barrier, real = threading.Barrier(2, timeout=120), run.get_solver

    def solver_meeting_at_the_barrier(name):
        solve = real(name)

        def solve_at_once(*args, **kwargs):
            barrier.wait()
            return solve(*args, **kwargs)
        return solve_at_once

    monkeypatch.setattr(run, "get_solver", solver_meeting_at_the_barrier)
    generate(config(tmp_path / "two", shard_size=4), Worker(threads=2), progress=False)
    monkeypatch.undo()
    generate(config(tmp_path / "one", shard_size=4), Worker(threads=1), progress=False)
    assert tree(tmp_path / "two") == tree(tmp_path / "one")
