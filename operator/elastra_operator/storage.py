"""Deleting one checkpoint's durable storage: the work of the Checkpoint finalizer.

Only a `step-N` directory is ever deleted (the Checkpoint model refuses other URIs), and its
`manifest.json` goes first: a checkpoint is committed when its manifest exists, so a deletion cut short
leaves an uncommitted leftover that no restore will pick, never a committed checkpoint with holes.

Directory URIs are deleted with the filesystem (the operator must mount the shared tier, as on
localcluster); `s3://` URIs with boto3 (imported lazily: the operator image carries boto3, never torch).
"""

from __future__ import annotations

import pathlib
import shutil
from typing import Any

from elastra.api.checkpoint import STEP_DIR, CheckpointSpec

MANIFEST = "manifest.json"


class StorageError(RuntimeError):
    """Deleting failed; the finalizer keeps the object and retries."""


def delete_checkpoint(spec: CheckpointSpec, credentials: dict[str, str] | None = None) -> str:
    """Delete the durable step directory of `spec`; return what was done, for the log and the Event."""
    uri = spec.uri.rstrip("/")
    if not STEP_DIR.match(uri.rsplit("/", 1)[-1]):  # the model checks this too; never widen a deletion
        raise StorageError(f"refusing to delete {uri!r}: not a step-N directory")
    if uri.startswith("s3://"):
        return _delete_s3(uri, spec, credentials or {})
    return _delete_directory(pathlib.Path(uri))


def _delete_directory(path: pathlib.Path) -> str:
    if not path.exists():
        return f"{path} already gone"
    try:
        (path / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(path)
    except OSError as exc:
        raise StorageError(f"cannot delete {path}: {exc}") from exc
    return f"deleted {path}"


def _delete_s3(uri: str, spec: CheckpointSpec, credentials: dict[str, str]) -> str:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    prefix = key.rstrip("/") + "/"
    access = spec.storage
    client: Any = boto3.client(
        "s3",
        endpoint_url=access.endpoint if access else None,
        region_name=access.region if access else None,
        aws_access_key_id=credentials.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=credentials.get("AWS_SECRET_ACCESS_KEY"),
    )
    try:
        client.delete_object(Bucket=bucket, Key=prefix + MANIFEST)
        deleted = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents") or []]
            if keys:
                result = client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
                if result.get("Errors"):
                    raise StorageError(f"S3 refused to delete {len(result['Errors'])} object(s) under {uri}")
                deleted += len(keys)
    except (BotoCoreError, ClientError) as exc:
        raise StorageError(f"cannot delete {uri}: {exc}") from exc
    return f"deleted the manifest and {deleted} other object(s) under {uri}"
