"""`cmt verify`: truncated tars, flipped zarr bytes and missing shards are caught, named, and fixed by the
command it prints; readers refuse damaged datasets at open."""

import shlex

import pytest
from click.testing import CliRunner

from cli.main import cli
from cmt_pipeline.config import GenerateConfig
from cmt_pipeline.generation import generate
from cmt_pipeline.stores import open_store
from cmt_pipeline.errors import CMTError
from conftest import copier


def tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A finished 60-sample dataset per format (4 shards of 16), made once and copied by each test."""
    base = tmp_path_factory.mktemp("pristine")
    for fmt in ("zarr", "wds"):
        generate(GenerateConfig(teacher="gmm:gmm8x8", num_samples=60, shard_size=16, batch_size=16, steps=8,
                                format=fmt, device="cpu", out=str(base / fmt)), progress=False)
    return base


@pytest.fixture
def dataset(pristine, tmp_path):
    return copier(pristine, tmp_path)


def verify(*args):
    return CliRunner().invoke(cli, ["verify", "--quiet", *map(str, args)])


def regenerate_from(output):
    """Run the generate-trajectories command that `cmt verify` printed (the test's user follows the message)."""
    line = next(line for line in output.splitlines() if "cmt generate-trajectories" in line)
    args = shlex.split(line.split(". ", 1)[1])
    assert args[:2] == ["cmt", "generate-trajectories"]
    r = CliRunner().invoke(cli, [*args[1:], "--quiet", "--device", "cpu"])
    assert r.exit_code == 0, r.output


def assert_repaired_to(root, original):
    r = verify(root)
    assert r.exit_code == 0 and "ready for training" in r.output, r.output
    assert tree(root) == original


def test_intact_dataset_passes(dataset):
    for fmt in ("zarr", "wds"):
        r = verify(dataset(fmt))
        assert r.exit_code == 0 and "all 4 shards check out" in r.output and "sha256 + content" in r.output, r.output


def test_truncated_tar_is_caught_named_and_fixed(dataset):
    root = dataset("wds")
    original = tree(root)
    tar = root / "shards" / "shard-000001.tar"
    tar.write_bytes(tar.read_bytes()[:5000])  # cut short after its marker was written
    r = verify(root)
    assert r.exit_code == 1
    assert "shard 1 (samples 16..31): corrupt: shards/shard-000001.tar has 5000 bytes" in r.output, r.output
    assert f"cmt verify {root} --repair" in r.output and "cmt generate-trajectories" in r.output
    with pytest.raises(CMTError, match="damaged: shard 1: shards/shard-000001.tar has 5000 bytes"):
        open_store(root)  # the cheap size check at open refuses it
    open_store(root, require_complete=False)  # the caller can still ask for it as it is
    r = verify(root, "--repair")
    assert r.exit_code == 1 and "removed done/000001.json, manifest.json" in r.output, r.output
    regenerate_from(r.output)
    assert_repaired_to(root, original)


def test_flipped_byte_in_a_zarr_chunk_is_caught_named_and_fixed(dataset):
    root = dataset("zarr")
    original = tree(root)
    chunk = root / "data.zarr" / "traj" / "c" / "2" / "0" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    open_store(root)  # same size: the cheap check at open cannot see it, which is why verify exists
    assert verify(root, "--quick").exit_code == 0
    r = verify(root)
    assert r.exit_code == 1
    assert ("shard 2 (samples 32..47): corrupt: data.zarr/traj/c/2/0/0/0/0 does not match the sha256"
            in r.output), r.output
    assert "--repair" in r.output and "cmt generate-trajectories" in r.output
    # without the repair, a rerun of generation would keep the bad shard: its marker still says done
    regenerate_from(r.output)
    assert verify(root).exit_code == 1
    r = verify(root, "--repair")
    regenerate_from(r.output)
    assert_repaired_to(root, original)


@pytest.mark.parametrize("fmt", ["zarr", "wds"])
def test_missing_shard_is_caught_named_and_fixed(dataset, fmt):
    root = dataset(fmt)
    original = tree(root)
    (root / "done" / "000003.json").unlink()  # never finished: no marker (its files may or may not exist)
    for f in (root / "data.zarr").rglob("*") if fmt == "zarr" else (root / "shards").glob("*"):
        if f.is_file() and ("/c/3" in str(f) or f.name == "shard-000003.tar"):
            f.unlink()
    r = verify(root)
    assert r.exit_code == 1
    assert "shard 3 (samples 48..59): missing: no done marker" in r.output, r.output
    assert "--repair" not in r.output  # nothing to repair, just the command to run
    regenerate_from(r.output)
    assert_repaired_to(root, original)


def test_deleted_shard_file_behind_its_marker(dataset):
    root = dataset("wds")
    original = tree(root)
    (root / "shards" / "shard-000000.tar").unlink()
    r = verify(root)
    assert r.exit_code == 1 and "shard 0 (samples 0..15): corrupt: shards/shard-000000.tar is missing" in r.output
    with pytest.raises(CMTError, match="is damaged: shard 0"):
        open_store(root)
    # generation's own resume notices a marker whose files are gone, so the plain rerun fixes it
    regenerate_from(r.output)
    assert_repaired_to(root, original)


def test_marker_with_a_wrong_sample_range(dataset):
    root = dataset("zarr")
    marker = root / "done" / "000001.json"
    marker.write_text(marker.read_text().replace('"start": 16', '"start": 15'))
    r = verify(root)
    assert r.exit_code == 1 and "shard 1 (samples 16..31): corrupt: its marker records shard 1 samples [15, 32)" \
        in r.output, r.output


def test_finalize_writes_the_manifest_only_when_everything_checks_out(dataset):
    root = dataset("zarr")
    manifest = (root / "manifest.json").read_bytes()
    (root / "manifest.json").unlink()
    (root / ".tmp").mkdir()
    (root / ".tmp" / "shard-000001-99-deadbeef").write_bytes(b"half a shard")
    with pytest.raises(CMTError, match="incomplete"):
        open_store(root)
    r = verify(root)
    assert r.exit_code == 1 and "not finalized" in r.output and "1 leftover temporary file" in r.output, r.output
    (root / "done" / "000002.json").rename(root / "m2")
    r = verify(root, "--finalize")
    assert r.exit_code == 1 and not (root / "manifest.json").exists()
    (root / "m2").rename(root / "done" / "000002.json")
    r = verify(root, "--finalize")
    assert r.exit_code == 0 and "ready for training" in r.output, r.output
    assert (root / "manifest.json").read_bytes() == manifest and not (root / ".tmp").exists()
    open_store(root)


def test_not_a_dataset(tmp_path):
    r = verify(tmp_path)
    assert r.exit_code == 2 and "is not a trajectory dataset" in r.output
