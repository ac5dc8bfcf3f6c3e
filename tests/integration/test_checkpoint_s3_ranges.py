"""The S3 tier's sized multipart upload and parallel ranged reads, against moto over HTTP."""

from __future__ import annotations

import os

import pytest

from elastra.storage import StorageError
from elastra.storage.s3 import S3Options, S3Storage

MIB = 1 << 20


@pytest.mark.parametrize(
    "cuts",
    [
        pytest.param([20 * MIB + 5], id="one-view-split-into-parallel-gets"),
        pytest.param([3, 9 * MIB, 11 * MIB + 2], id="views-spanning-the-range-boundaries"),
    ],
)
def test_a_large_read_is_split_into_ranged_gets_and_lands_exactly(s3_server, cuts: list[int]) -> None:  # type: ignore[no-untyped-def]
    bucket = s3_server.make_bucket(f"ranges-{len(cuts)}")
    storage = S3Storage(f"s3://{bucket}/p", S3Options(endpoint_url=s3_server.endpoint_url, max_concurrency=4))
    data = os.urandom(sum(cuts) + 100)
    storage.put_parts("step-1/f", [memoryview(data)[:7], memoryview(data)[7:]])
    assert storage.size("step-1/f") == len(data)
    buffers = [bytearray(n) for n in cuts]
    storage.read_into("step-1/f", 50, [memoryview(b) for b in buffers])
    assert b"".join(buffers) == data[50 : 50 + sum(cuts)]
    with pytest.raises(StorageError):
        storage.read_into("step-1/f", len(data) - 10, [memoryview(bytearray(20 * MIB))])
