"""Trajectory stores on object storage (issue 15), against a real S3-compatible server on 127.0.0.1 (moto's,
started and stopped here): the bucket holds the bytes a local run writes, nothing partial is trusted, `cmt verify`
catches damaged objects, bad URLs give one line, and no credential is ever written or shown."""

import json
import os
import random
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from cmt_pipeline.config import GenerateConfig
from cmt_pipeline.generation import generate
from cmt_pipeline.generation.run import PAUSE_VARIABLE
from cmt_pipeline.stores import read_all, verify
from cmt_pipeline.training.trajectories import trajectory_source
from s3_server import KEY_ID, SECRET

SMALL = dict(teacher="gmm:gmm8x8", num_samples=48, shard_size=16, batch_size=16, steps=4, device="cpu")


def bucket():
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)


def bucket_tree(url):
    """Every object under url, by key relative to it, with its bytes."""
    fs, prefix = bucket(), url.removeprefix("s3://")
    return {p[len(prefix) + 1:]: fs.cat_file(p) for p in sorted(fs.find(prefix))}


def local_tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def cmd(*args):
    return CliRunner().invoke(cli, [*map(str, args)])


def one_line_error(r, *patterns):
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    for p in patterns:
        assert p in lines[0], r.output
    assert SECRET not in r.output and KEY_ID not in r.output


@pytest.fixture(scope="module")
def stores(s3, tmp_path_factory):
    """The same small dataset per format, written locally and into the bucket."""
    base = tmp_path_factory.mktemp("local")
    for fmt in ("wds", "zarr"):
        generate(GenerateConfig(**SMALL, format=fmt, out=str(base / fmt)), progress=False)
        generate(GenerateConfig(**SMALL, format=fmt, out=f"s3://cmt/small/{fmt}"), progress=False)
    return base


@pytest.mark.parametrize("fmt", ["wds", "zarr"])
def test_bucket_holds_the_bytes_of_a_local_run_and_reads_back(stores, fmt):
    url = f"s3://cmt/small/{fmt}"
    assert bucket_tree(url) == local_tree(stores / fmt)
    assert verify(url).ready
    remote, local = read_all(url), read_all(stores / fmt)
    assert all(np.array_equal(remote[k], local[k]) for k in local)
    source, info = trajectory_source(url, 8, holdout=8, cache=False)  # lazy Zarr / streamed WebDataset
    batch = next(iter(source.batches(0) if hasattr(source, "batches") else source))
    assert batch["traj"].shape == (8, 4, 1, 8, 8) and info["store"] == url
    r = cmd("inspect", url)
    assert r.exit_code == 0 and "3/3" in r.output, r.output


@pytest.mark.parametrize("fmt", ["wds", "zarr"])
def test_verify_catches_a_truncated_and_a_missing_object_and_the_rerun_fixes_them(stores, fmt):
    url, fs = f"s3://cmt/damaged/{fmt}", bucket()
    fs.copy(f"cmt/small/{fmt}", f"cmt/damaged/{fmt}", recursive=True)
    first, last = (["shards/shard-000000.tar", "shards/shard-000002.tar"] if fmt == "wds" else
                   ["data.zarr/traj/c/0/0/0/0/0", "data.zarr/x0/c/2/0/0/0"])
    fs.pipe_file(f"cmt/damaged/{fmt}/{first}", fs.cat_file(f"cmt/damaged/{fmt}/{first}")[:-100])
    fs.rm_file(f"cmt/damaged/{fmt}/{last}")
    middle = next(k for k in fs.find(f"cmt/damaged/{fmt}") if "shard-000001" in k or "/x0/c/1/" in k)
    data = bytearray(fs.cat_file(middle))
    data[len(data) // 2] ^= 0xFF  # same size: only the sha256 tells
    fs.pipe_file(middle, bytes(data))
    r = cmd("verify", "--quiet", url)
    assert r.exit_code == 1, r.output
    assert f"shard 0 (samples 0..15): corrupt: {first} has" in r.output
    assert "shard 1 (samples 16..31): corrupt: " in r.output and "does not match the sha256" in r.output
    assert f"shard 2 (samples 32..47): corrupt: {last} is missing" in r.output
    with pytest.raises(Exception, match="is damaged: shard 0"):
        read_all(url)
    r = cmd("verify", "--quiet", "--repair", url)
    assert "repaired: removed done/000000.json, done/000001.json, done/000002.json, manifest.json" in r.output
    generate(GenerateConfig(**SMALL, format=fmt, out=url), progress=False)  # redoes exactly those shards
    assert bucket_tree(url) == local_tree(stores / fmt)


def test_bad_urls_give_one_line(s3, monkeypatch, tmp_path):
    gen = ["generate-trajectories", "--quiet", "--teacher", "gmm:gmm8x8", "--num-samples", 16, "--device", "cpu",
           "--out"]
    one_line_error(cmd(*gen, "s3://no-such-bucket/x"), "cannot write s3://no-such-bucket/x/plan.json",
                   "bucket does not exist")
    one_line_error(cmd("verify", "s3://no-such-bucket/x"), "not a trajectory dataset")
    one_line_error(cmd("verify", "gs://bucket/x"), "gs:// URLs need the fsspec package gcsfs")
    one_line_error(cmd(*gen, "abfs://container/x"), "abfs:// URLs need the fsspec package adlfs")
    one_line_error(cmd("inspect", f"s3://{KEY_ID}:{SECRET}@cmt/x"), "the s3:// URL holds credentials")
    one_line_error(cmd("mid-train", "--data", "s3://cmt/nothing-here", "--out", tmp_path / "run"),
                   "is not a trajectory dataset")
    import moto.settings

    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the server now checks credentials
    one_line_error(cmd("verify", "s3://cmt/small/wds"), "cannot read s3://cmt/small/wds/plan.json",
                   "PermissionError")
    one_line_error(cmd(*gen, "s3://cmt/denied"), "PermissionError")
    monkeypatch.undo()
    assert not bucket().exists("cmt/denied")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    one_line_error(cmd("verify", "s3://cmt/small/wds"), "Could not connect to the endpoint URL")
    one_line_error(cmd(*gen, "s3://cmt/unreachable"), "Could not connect to the endpoint URL")


def test_no_credential_is_written_anywhere(stores):
    """The secret key and key id appear in no object of the bucket (the error messages are checked above)."""
    for url in ("s3://cmt/small/wds", "s3://cmt/small/zarr"):
        for key, data in bucket_tree(url).items():
            assert SECRET.encode() not in data and KEY_ID.encode() not in data, key


# ---- processes: kill -9 at random moments, two workers at once, training from the bucket (slow) ----

N, SHARD = 150, 8


def start(out, fmt, env, *extra):
    from test_cluster import clean_env

    opts = ["--teacher=gmm:gmm8x8", f"--num-samples={N}", f"--shard-size={SHARD}", "--batch-size=8",
            f"--format={fmt}", "--device=cpu", f"--out={out}"]
    return subprocess.Popen([os.sys.executable, "-m", "cli", "generate-trajectories", "--quiet", *opts, *extra],
                            env=clean_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(*procs):
    for p in procs:
        out = p.communicate(timeout=300)[0]
        assert p.returncode == 0, out
        assert SECRET not in out and KEY_ID not in out


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["wds", "zarr"])
def test_sigkill_at_random_moments_and_two_workers_give_the_local_bytes(s3, tmp_path, fmt):
    generate(GenerateConfig(teacher="gmm:gmm8x8", num_samples=N, shard_size=SHARD, batch_size=8, format=fmt,
                            device="cpu", out=str(tmp_path / "local")), progress=False)
    expected = local_tree(tmp_path / "local")
    rng, url, interrupted = random.Random(fmt), f"s3://cmt/killed/{fmt}", 0
    markers = f"cmt/killed/{fmt}/done/*"
    for _ in range(3):
        # kill after a random number of new shard markers, the run holding still once it has handed that many to
        # its writer (generation's test hook): mid-run on any machine, however long the start-up or the load
        hold = rng.randrange(1, N // SHARD // 4)
        kill_at, hung = len(bucket().glob(markers)) + hold, time.monotonic() + 900  # a guard against a hang only
        p = start(url, fmt, {**s3, PAUSE_VARIABLE: str(hold)})
        while len(bucket().glob(markers)) < kill_at:
            assert p.poll() is None and time.monotonic() < hung
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
        p.wait()
        if bucket().exists(f"cmt/killed/{fmt}/plan.json") and not bucket().exists(f"cmt/killed/{fmt}/manifest.json"):
            interrupted += 1
            report = verify(url)  # what a killed run left: never trusted, never a crash
            assert not report.ready  # missing shards, or all of them but no manifest yet
    assert interrupted, "no kill landed mid-run; the trial proves nothing"
    finish(start(url, fmt, s3))
    assert bucket_tree(url) == expected
    url = f"s3://cmt/two/{fmt}"
    finish(*[start(url, fmt, s3, "--num-workers=2", f"--worker-index={i}") for i in range(2)])
    assert bucket_tree(url) == expected
    assert cmd("verify", "--quiet", url).exit_code == 0


@pytest.mark.slow
def test_mid_training_from_the_bucket(stores, tmp_path):
    for fmt in ("wds", "zarr"):
        run = tmp_path / fmt
        r = cmd("mid-train", "--data", f"s3://cmt/small/{fmt}", "--steps", 4, "--batch-size", 8, "--holdout", 8,
                "--eval-every", 0, "--init", "random", "--device", "cpu", "--out", run)
        assert r.exit_code == 0, r.output
        for f in run.rglob("*"):
            if f.is_file():
                data = f.read_bytes()
                assert SECRET.encode() not in data and KEY_ID.encode() not in data, f


def test_evaluate_pairs_with_a_store_in_the_bucket(stores, tmp_path):
    """--store s3://... was refused as a missing directory before the library saw it."""
    scores = {}
    for store in ("s3://cmt/small/zarr", stores / "zarr"):
        out = tmp_path / str(len(scores))
        r = cmd("evaluate", "--teacher", "gmm:gmm8x8", "--steps", 4, "--num-samples", 48, "--store", store,
                "--store-samples", 16, "--device", "cpu", "--out", out)
        assert r.exit_code == 0, r.output
        metrics = json.loads((out / "evaluation.json").read_text())["metrics"]
        scores[str(store)] = (metrics["paired_samples"], metrics["paired_mse"])
    assert len(set(scores.values())) == 1 and next(iter(scores.values()))[0] == 16, scores


def test_upload_folders_of_killed_processes_are_removed_by_the_next_run(s3, tmp_path):
    """A generator killed with SIGKILL never removes its local upload folder; the next run into a bucket removes
    the folders of processes that are gone, and no other."""
    import tempfile
    from pathlib import Path

    gone = subprocess.Popen([os.sys.executable, "-c", "pass"])
    gone.wait()
    stale = Path(tempfile.gettempdir()) / f"cmt-upload-{gone.pid}-killed"
    alive = Path(tempfile.gettempdir()) / f"cmt-upload-{os.getppid()}-running"
    for folder in (stale, alive):
        folder.mkdir()
        (folder / "shard-000000.tar-1-0").write_bytes(b"in flight")
    try:
        generate(GenerateConfig(**SMALL, format="wds", out="s3://cmt/after-a-kill"), progress=False)
        assert not stale.exists() and alive.exists()
    finally:
        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(alive, ignore_errors=True)


def test_a_zarr_store_read_from_the_bucket_closes_its_connections(stores, capfd, caplog):
    """aiohttp logged "Unclosed client session" (on stderr, through asyncio's logger) for each zarr store read from
    a bucket and dropped: mid-training from a bucket printed several between its progress lines."""
    import gc

    gc.collect()  # what earlier tests left is theirs: this test measures its own reads
    capfd.readouterr()
    caplog.clear()
    for _ in range(2):
        read_all("s3://cmt/small/zarr")
        gc.collect()
    said = capfd.readouterr().err + caplog.text
    assert "Unclosed" not in said, said


def test_a_location_closes_its_connections_however_slowly_the_machine_answers(stores, capfd, caplog, monkeypatch):
    """s3fs closes a synchronous file system's client in its finalizer, but waits 0.1 s for it: on a busy machine
    (CI beside other jobs) it gave up, and aiohttp logged "Unclosed client session" when the client was collected.
    Here every such wait times out, as on the busiest machine; the Location's own close waits for the loop."""
    import gc
    import weakref

    import s3fs.core
    from fsspec.exceptions import FSTimeoutError
    from cmt_pipeline.stores.location import Location

    def too_slow(*args, **kwargs):
        raise FSTimeoutError

    gc.collect()  # what earlier tests left closes as it always did, before the machine turns slow
    capfd.readouterr()
    caplog.clear()
    monkeypatch.setattr(s3fs.core, "sync", too_slow)  # only s3fs's own finalizer calls it by this name
    for _ in range(2):
        location = Location("s3://cmt/small/zarr")
        assert location.exists("plan.json")
        collected = weakref.ref(location.fs)
        del location
        gc.collect()
        assert collected() is None  # the close neither leaks the file system nor is skipped
    said = capfd.readouterr().err + caplog.text
    assert "Unclosed" not in said, said


def test_closing_a_session_after_the_event_loop_is_gone_warns_nothing(monkeypatch):
    """At interpreter exit zarr's loop may be gone when a store is collected: the close is skipped, and the
    coroutine made for it is closed too, else Python warns that it was never awaited (seen in CI's output)."""
    import gc
    import warnings

    import zarr.core.sync
    from cmt_pipeline.stores.location import close_session

    class AsyncFS:
        async def set_session(self):
            raise AssertionError("never reached: the loop is gone")

    def gone(coroutine):
        raise RuntimeError("event loop is closed")

    monkeypatch.setattr(zarr.core.sync, "sync", gone)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        close_session(AsyncFS())
        gc.collect()
    assert not [w for w in seen if "never awaited" in str(w.message)], [str(w.message) for w in seen]
