"""Training trusts only what `cmt verify` would pass (issue 30): a flipped byte, a same-size shard of another
seed, a foreign shard with its own marker, a shard holding other samples (marker and manifest forged to match)
and a deleted marker each stop `cmt mid-train` with one line naming the shard and `cmt verify --repair`, in both
formats, from a local folder and from a loopback S3 server; `cmt verify` rejects each, and --quick never calls
such a store ready for training."""

import json
import shutil

import pytest
from click.testing import CliRunner

from cli.main import cli
from cmt_pipeline.config import GenerateConfig
from cmt_pipeline.generation import generate
from cmt_pipeline.stores import WRITERS, verify
from cmt_pipeline.stores.layout import MANIFEST, marker_path, write_json
from cmt_pipeline.stores.location import Location
from conftest import copier

GMM = dict(teacher="gmm:gmm8x8", num_samples=48, shard_size=16, batch_size=16, steps=4, device="cpu")
SHARD = 1  # the damaged shard: samples 16..31


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Finished 48-sample stores per format (3 shards of 16): `a` seed 0, and `b` seed 7 (the same plan but
    its seed, so the same shard sizes in a tar)."""
    base = tmp_path_factory.mktemp("read-trust")
    for fmt in ("wds", "zarr"):
        for name, seed in (("a", 0), ("b", 7)):
            generate(GenerateConfig(**GMM, format=fmt, seed=seed, out=str(base / f"{name}-{fmt}")), progress=False)
    return base


def marker(root, k):
    return json.loads((root / marker_path(k)).read_text())


def flip_byte(root, other):
    f = root / max(marker(root, SHARD)["files"].items(), key=lambda kv: kv[1]["bytes"])[0]  # its largest file
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    return "does not match the sha256 in its done marker"


def swap_shard(root, other):
    for rel in marker(root, SHARD)["files"]:
        shutil.copyfile(other / rel, root / rel)
    return "does not match the sha256 in its done marker"


def swap_shard_and_marker(root, other):
    swap_shard(root, other)
    shutil.copyfile(other / marker_path(SHARD), root / marker_path(SHARD))
    return f"its done marker {marker_path(SHARD)} is not the one manifest.json lists"


def move_shard(root, other):
    """Shard 2's files put in shard 1's place, with shard 1's marker and the manifest rewritten to certify them:
    every size and sha256 matches, only the sample indices inside tell."""
    plan = json.loads((root / MANIFEST).read_text())
    writer, moved = WRITERS[plan["format"]](root, plan), marker(root, SHARD + 1)
    files = {}
    for src, dst in zip(writer.shard_files(SHARD + 1), writer.shard_files(SHARD)):
        shutil.copyfile(root / src, root / dst)
        files[dst] = moved["files"][src]
    forged = {**marker(root, SHARD), "files": files}
    write_json(Location(root), marker_path(SHARD), forged)
    plan["shards"][SHARD] = forged
    write_json(Location(root), MANIFEST, plan)
    return "holds sample indices [32, 33, 34]... (16), expected 16..31"


def delete_marker(root, other):
    (root / marker_path(SHARD)).unlink()
    return f"no done marker {marker_path(SHARD)}"


FAULTS = {"flipped byte": flip_byte, "same-size shard of another seed": swap_shard,
          "foreign shard with its marker": swap_shard_and_marker, "shard of other samples": move_shard,
          "deleted marker": delete_marker}


def damaged(stores, tmp_path, fmt, fault):
    """A copy of store `a` with `fault` applied, and the message training must refuse it with."""
    root = copier(stores, tmp_path)(f"a-{fmt}")
    return root, FAULTS[fault](root, stores / f"b-{fmt}")


def mid_train(data, out):
    return CliRunner().invoke(cli, ["mid-train", "--data", str(data), "--steps", "2", "--batch-size", "8",
                                    "--holdout", "0", "--init", "random", "--channels", "8,16", "--device", "cpu",
                                    "--quiet", "--out", str(out)])


def assert_refused(r, data, why):
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert f"shard {SHARD} (samples 16..31): " in lines[0] and why in lines[0], r.output
    assert f"`cmt verify {data} --repair`" in lines[0], r.output


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("fmt", ["wds", "zarr"])
def test_training_refuses_a_shard_verify_rejects(stores, tmp_path, fmt, fault):
    root, why = damaged(stores, tmp_path, fmt, fault)
    report = verify(root, full=True)
    assert not report.ready and (SHARD in report.corrupt or SHARD in report.missing), report.text()
    assert "ready for training" not in verify(root, full=False).text()
    if fmt == "zarr" and fault in ("same-size shard of another seed", "foreign shard with its marker"):
        why = "is damaged"  # zarr compresses: another seed's shard has other sizes, refused at open as before
        r = mid_train(root, tmp_path / "run")
        assert r.exit_code == 2 and why in r.output and "shard 1" in r.output, r.output
        return
    assert_refused(mid_train(root, tmp_path / "run"), root, why)
    assert not (tmp_path / "run" / "model.ckpt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["flipped byte", "shard of other samples"])
@pytest.mark.parametrize("fmt", ["wds", "zarr"])
def test_training_from_the_bucket_refuses_a_damaged_shard(s3, stores, tmp_path, fmt, fault):
    import s3fs

    root, why = damaged(stores, tmp_path, fmt, fault)
    url = f"s3://cmt/{fmt}-{fault.replace(' ', '-')}"
    s3fs.S3FileSystem(skip_instance_cache=True).put(f"{root}/", url.removeprefix("s3://"), recursive=True)
    assert_refused(mid_train(url, tmp_path / "run"), url, why)


def test_an_intact_store_trains_and_quick_verify_says_what_it_checked(stores, tmp_path):
    r = mid_train(stores / "a-wds", tmp_path / "run")
    assert r.exit_code == 0, r.output
    text = verify(stores / "a-zarr", full=False).text()
    assert "ready for training" not in text and "contents not checked (--quick)" in text, text
