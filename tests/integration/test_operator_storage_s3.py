"""The Checkpoint finalizer's S3 deletion against a real moto S3 server over HTTP."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from elastra.api.checkpoint import CheckpointSpec, StorageAccess
from elastra_operator import storage

pytestmark = pytest.mark.timeout(60)


def _spec(uri: str, endpoint: str) -> CheckpointSpec:
    return CheckpointSpec(
        job="tj",
        step=10,
        world_size=2,
        format_version=1,
        uri=uri,
        manifest_digest="sha256:00",
        committed_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        storage=StorageAccess(endpoint=endpoint, region="us-east-1", credentials_secret="creds"),
    )


def _keys(client: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_deletes_exactly_one_step_prefix(s3_server: Any) -> None:
    bucket = s3_server.make_bucket("ckpt-delete")
    client = s3_server.client()
    for key in ("ns/tj/step-10/manifest.json", "ns/tj/step-10/r0.bin", "ns/tj/step-100/manifest.json"):
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    for i in range(3):
        client.put_object(Bucket=bucket, Key=f"ns/tj/step-10/shards/{i}.bin", Body=b"y")
    credentials = {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}

    done = storage.delete_checkpoint(
        _spec(f"s3://{bucket}/ns/tj/step-10", s3_server.endpoint_url),
        credentials,
        expected=f"s3://{bucket}/ns/tj/step-10",
    )

    assert "1 manifest(s) and 4 other object(s)" in done
    assert _keys(client, bucket) == ["ns/tj/step-100/manifest.json"], (
        "step-100 shares the prefix text, not the dir"
    )
    again = storage.delete_checkpoint(
        _spec(f"s3://{bucket}/ns/tj/step-10", s3_server.endpoint_url),
        credentials,
        expected=f"s3://{bucket}/ns/tj/step-10",
    )
    assert "1 manifest(s) and 0 other object(s)" in again


def test_unreachable_bucket_is_a_storage_error(s3_server: Any) -> None:
    credentials = {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}
    with pytest.raises(storage.StorageError, match="cannot delete"):
        storage.delete_checkpoint(
            _spec("s3://no-such-bucket/ns/tj/step-1", s3_server.endpoint_url),
            credentials,
            expected="s3://no-such-bucket/ns/tj/step-1",
        )


def test_job_root_deletion_takes_every_step_and_nothing_else(s3_server: Any) -> None:
    bucket = s3_server.make_bucket("ckpt-job")
    client = s3_server.client()
    keys = [
        "p/ns/tj/step-1/manifest.json",
        "p/ns/tj/step-1/a.bin",
        "p/ns/tj/step-2/b.bin",
        "p/ns/tj/notes.txt",
    ]
    for key in [*keys, "p/ns/tj2/step-1/manifest.json"]:
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    credentials = {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}
    access = StorageAccess(endpoint=s3_server.endpoint_url)

    done = storage.delete_job_storage(f"s3://{bucket}/p/ns/tj", access, credentials)

    assert "1 manifest(s) and 2 other object(s)" in done
    assert _keys(client, bucket) == ["p/ns/tj/notes.txt", "p/ns/tj2/step-1/manifest.json"]
