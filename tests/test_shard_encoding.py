"""The shard writer's own encoders write exactly the bytes zarr's codec pipeline writes (docs/formats.md)."""

import numpy as np
import pytest
import zarr

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
