"""Deleting one checkpoint's durable storage: the work of the Checkpoint finalizer.

Only a `step-N` directory is ever deleted (the Checkpoint model refuses other URIs), and its
`manifest.json` goes first: a checkpoint is committed when its manifest exists, so a deletion cut short
leaves an uncommitted leftover that no restore will pick, never a committed checkpoint with holes.

Directory URIs are deleted with the filesystem (the operator must mount the shared tier, as on
localcluster); `s3://` URIs with boto3 (imported lazily: the operator image carries boto3, never torch).
"""

from __future__ import annotations

import contextlib
import pathlib
import shutil
from typing import Any

from elastra.api.checkpoint import STEP_DIR, CheckpointSpec, StorageAccess

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


def delete_job_storage(
    root: str, access: StorageAccess | None, credentials: dict[str, str] | None = None
) -> str:
    """Delete every `step-N` directory under a deleted job's checkpoint root: the ones its Checkpoint
    objects cover, and commits made while the job was going away. Nothing else under the root is touched."""
    root = root.rstrip("/")
    if root.startswith("s3://"):
        bucket, _, key = root.removeprefix("s3://").partition("/")
        client = _s3_client(access, credentials or {})
        return _delete_s3_prefixes(client, bucket, key.rstrip("/") + "/", root, whole_steps=True)
    base = pathlib.Path(root)
    if not base.is_dir():
        return f"{base} already gone"
    done = [_delete_directory(child) for child in sorted(base.iterdir()) if STEP_DIR.match(child.name)]
    with contextlib.suppress(OSError):
        base.rmdir()  # only when nothing else is left in it
    return f"{len(done)} checkpoint directories under {base} deleted"


def _delete_directory(path: pathlib.Path) -> str:
    if not path.exists():
        return f"{path} already gone"
    try:
        (path / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(path)
    except OSError as exc:
        raise StorageError(f"cannot delete {path}: {exc}") from exc
    return f"deleted {path}"


def _s3_client(access: StorageAccess | None, credentials: dict[str, str]) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=access.endpoint if access else None,
        region_name=access.region if access else None,
        aws_access_key_id=credentials.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=credentials.get("AWS_SECRET_ACCESS_KEY"),
    )


def _delete_s3(uri: str, spec: CheckpointSpec, credentials: dict[str, str]) -> str:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    client = _s3_client(spec.storage, credentials)
    return _delete_s3_prefixes(client, bucket, key.rstrip("/") + "/", uri, whole_steps=False)


def _delete_s3_prefixes(client: Any, bucket: str, prefix: str, uri: str, *, whole_steps: bool) -> str:
    """Delete the objects under `prefix` (one step directory), or, with `whole_steps`, under every
    `step-N/` directly below it; manifests first."""
    from botocore.exceptions import BotoCoreError, ClientError

    def wanted(key: str) -> bool:
        return not whole_steps or bool(STEP_DIR.match(key[len(prefix) :].split("/", 1)[0]))

    try:
        keys = [
            item["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents") or []
            if wanted(item["Key"])
        ]
        manifests = [k for k in keys if k.endswith("/" + MANIFEST)]
        if not whole_steps:
            manifests = [prefix + MANIFEST]
        for key in manifests:
            client.delete_object(Bucket=bucket, Key=key)
        rest = [k for k in keys if k not in manifests]
        for i in range(0, len(rest), 1000):
            batch = [{"Key": k} for k in rest[i : i + 1000]]
            result = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            if result.get("Errors"):
                raise StorageError(f"S3 refused to delete {len(result['Errors'])} object(s) under {uri}")
    except (BotoCoreError, ClientError) as exc:
        raise StorageError(f"cannot delete {uri}: {exc}") from exc
    return f"deleted {len(manifests)} manifest(s) and {len(rest)} other object(s) under {uri}"
