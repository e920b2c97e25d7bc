"""S3 requests per stage of a store's life: every S3 API call s3fs makes, counted at the client, while a small
store (4 shards) is generated into, verified in, opened from and trained from (16 lazy batches) a bucket on moto's
S3 server on 127.0.0.1. The table in docs/cluster.md ("What it costs in requests") comes from here.

    python benchmarks/s3_requests.py
"""

from __future__ import annotations

import collections
import os
import sys
from pathlib import Path

import aiobotocore.client

from cmt_pipeline.config import GenerateConfig
from cmt_pipeline.generation import generate
from cmt_pipeline.stores import verify
from cmt_pipeline.training.trajectories import trajectory_source

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from s3_server import local_s3  # noqa: E402

COUNTS = collections.Counter()
_call = aiobotocore.client.AioBaseClient._make_api_call


async def counted(self, operation, params):
    """Count the call by operation (conditional and ranged ones apart), then make it."""
    kind = (" (conditional)" if "IfNoneMatch" in params else "") + (" (ranged)" if "Range" in params else "")
    COUNTS[operation + kind] += 1
    return await _call(self, operation, params)


def stage(name: str, fmt: str) -> None:
    print(f"{fmt:5} {name:28} {dict(sorted(COUNTS.items()))}")
    COUNTS.clear()


def main():
    with local_s3() as env:
        os.environ.update(env)
        aiobotocore.client.AioBaseClient._make_api_call = counted  # after the bucket is made
        for fmt in ("wds", "zarr"):
            url = f"s3://cmt/{fmt}"
            generate(GenerateConfig(teacher="gmm:gmm8x8", num_samples=64, shard_size=16, batch_size=16, steps=4,
                                    device="cpu", format=fmt, out=url), progress=False)
            stage("generate (4 shards)", fmt)
            verify(url)
            stage("verify", fmt)
            source, _ = trajectory_source(url, 8, holdout=0, cache=False)
            stage("open for training", fmt)
            batches = source.batches(0)
            for _ in range(16):
                next(batches)
            stage("16 batches of 8 (lazy)", fmt)


if __name__ == "__main__":
    main()
