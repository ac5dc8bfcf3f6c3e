"""The S3 tier, with boto3.

Uploads use boto3's transfer manager: multipart above `multipart_threshold`, parts uploaded in parallel
threads, and botocore's `standard` retry mode (exponential backoff with jitter) on every request. An S3
object appears only when its (multipart) upload completes, so a key is never seen half-written. Reads
are ranged GETs of only the bytes asked for.
"""

from __future__ import annotations

import builtins
import io
import os
from dataclasses import dataclass
from typing import Any

from elastra.storage.base import NotFoundError, StorageError, check_key


@dataclass(kw_only=True, slots=True, frozen=True)
class S3Options:
    """How to reach S3 and how to upload. Unset connection fields fall back to the AWS environment."""

    endpoint_url: str | None = None
    """S3 endpoint; None reads `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, else AWS."""
    region: str | None = None
    """Region; None reads `AWS_REGION` / `AWS_DEFAULT_REGION`."""
    multipart_threshold: int = 8 << 20
    """Objects at least this large are uploaded in parts (S3's minimum part size is 5 MiB)."""
    part_size: int = 8 << 20
    """Size of one multipart part."""
    max_concurrency: int = 8
    """Parts uploaded in parallel per object."""
    max_attempts: int = 8
    """Attempts per request, with exponential backoff between them."""
    access_key_id: str | None = None
    """Explicit credentials (with `secret_access_key`); None: boto3's default chain. The operator
    always passes a job's own keys, never relying on the chain."""
    secret_access_key: str | None = None
    """The secret half of `access_key_id`."""

    def __post_init__(self) -> None:
        if self.part_size < 5 << 20:
            raise ValueError(f"part_size {self.part_size} is below S3's 5 MiB minimum part size")
        if self.max_concurrency < 1 or self.max_attempts < 1:
            raise ValueError("max_concurrency and max_attempts must be at least 1")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` → (`bucket`, `a/b`); the prefix has no leading or trailing slash."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI without a bucket: {uri!r}")
    return bucket, prefix.strip("/")


class _PartsReader(io.RawIOBase):
    """A read-only file object over a list of memoryviews, so uploads stream from staging buffers."""

    def __init__(self, parts: list[memoryview]) -> None:
        self._parts = [p.cast("B") for p in parts if p.nbytes]
        self._index = 0
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        written = 0
        while written < len(out) and self._index < len(self._parts):
            part = self._parts[self._index]
            n = min(len(out) - written, part.nbytes - self._offset)
            out[written : written + n] = part[self._offset : self._offset + n]
            written += n
            self._offset += n
            if self._offset == part.nbytes:
                self._index += 1
                self._offset = 0
        return written


class S3Storage:
    """A `Storage` rooted at `s3://bucket/prefix`."""

    def __init__(self, uri: str, options: S3Options | None = None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.uri = uri
        self._bucket, self._prefix = parse_s3_uri(uri)
        opts = options or S3Options()
        endpoint = (
            opts.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )
        region = (
            opts.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        )
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id=opts.access_key_id,
            aws_secret_access_key=opts.secret_access_key,
            config=Config(
                retries={"max_attempts": opts.max_attempts, "mode": "standard"},
                max_pool_connections=max(10, opts.max_concurrency * 2),
            ),
        )
        self._transfer = TransferConfig(
            multipart_threshold=opts.multipart_threshold,
            multipart_chunksize=opts.part_size,
            max_concurrency=opts.max_concurrency,
            use_threads=True,
        )

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self._prefix}/{key}" if self._prefix else key

    def _error(self, action: str, key: str, exc: Exception) -> StorageError:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        message = f"S3 {action} s3://{self._bucket}/{self._key(key)}: {exc}"
        if code in {"NoSuchKey", "404", "NotFound"}:
            return NotFoundError(message)
        return StorageError(message)

    def put_bytes(self, key: str, data: bytes | memoryview) -> None:
        self.put_parts(key, [memoryview(data)])

    def put_parts(self, key: str, parts: list[memoryview]) -> None:
        try:
            self._client.upload_fileobj(
                _PartsReader(parts), self._bucket, self._key(key), Config=self._transfer
            )
        except Exception as exc:
            raise self._error("upload", key, exc) from exc

    def put_file(self, key: str, path: str) -> None:
        try:
            self._client.upload_file(path, self._bucket, self._key(key), Config=self._transfer)
        except Exception as exc:
            raise self._error("upload", key, exc) from exc

    def get_range(self, key: str, start: int, end: int) -> bytes:
        if start < 0 or end < start:
            raise StorageError(f"invalid byte range [{start}, {end}) for {key}")
        if end == start:
            return b""
        try:
            response = self._client.get_object(
                Bucket=self._bucket, Key=self._key(key), Range=f"bytes={start}-{end - 1}"
            )
            data: bytes = response["Body"].read()
        except Exception as exc:
            raise self._error("ranged GET", key, exc) from exc
        if len(data) != end - start:
            raise StorageError(f"S3 ranged GET {key}: got {len(data)} bytes, wanted {end - start}")
        return data

    def read_into(self, key: str, start: int, parts: list[memoryview]) -> None:
        views = [p.cast("B") if p.format != "B" else p for p in parts if p.nbytes]
        if not views:
            return
        data = memoryview(self.get_range(key, start, start + sum(v.nbytes for v in views)))
        offset = 0
        for view in views:
            view[:] = data[offset : offset + view.nbytes]
            offset += view.nbytes

    def get(self, key: str) -> bytes:
        try:
            data: bytes = self._client.get_object(Bucket=self._bucket, Key=self._key(key))["Body"].read()
        except Exception as exc:
            raise self._error("GET", key, exc) from exc
        return data

    def size(self, key: str) -> int | None:
        try:
            response = self._client.head_object(Bucket=self._bucket, Key=self._key(key))
        except Exception as exc:
            err = self._error("HEAD", key, exc)
            if isinstance(err, NotFoundError):
                return None
            raise err from exc
        return int(response["ContentLength"])

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def _root_prefix(self) -> str:
        return f"{self._prefix}/" if self._prefix else ""

    def list_dirs(self) -> list[str]:
        names: list[str] = []
        root = self._root_prefix()
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self._bucket, Prefix=root, Delimiter="/"):
                for common in page.get("CommonPrefixes", []):
                    names.append(common["Prefix"][len(root) :].rstrip("/"))
        except Exception as exc:
            raise StorageError(f"S3 list s3://{self._bucket}/{root}: {exc}") from exc
        return sorted(names)

    def list(self, prefix: str) -> list[str]:
        root = self._root_prefix()
        keys: list[str] = []
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self._bucket, Prefix=self._key(prefix) + "/"):
                keys.extend(obj["Key"][len(root) :] for obj in page.get("Contents", []))
        except Exception as exc:
            raise StorageError(f"S3 list s3://{self._bucket}/{self._key(prefix)}/: {exc}") from exc
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self._bucket, Key=self._key(key))
        except Exception as exc:
            raise self._error("DELETE", key, exc) from exc

    def delete_prefix(self, prefix: str) -> None:
        keys = self.list(prefix)
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[i : i + 1000]]
            try:
                response = self._client.delete_objects(
                    Bucket=self._bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except Exception as exc:
                raise StorageError(f"S3 delete under {self._key(prefix)}: {exc}") from exc
            if response.get("Errors"):
                raise StorageError(f"S3 delete under {self._key(prefix)}: {response['Errors'][:3]}")

    def list_uploads(self) -> builtins.list[tuple[str, str]]:
        """`(key, upload id)` of every incomplete multipart upload under this root (a crashed upload
        leaves one: its parts are stored and billed, yet no object and no listing shows them)."""
        root = self._root_prefix()
        found: builtins.list[tuple[str, str]] = []
        try:
            paginator = self._client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self._bucket, Prefix=root):
                found.extend((u["Key"][len(root) :], u["UploadId"]) for u in page.get("Uploads", []))
        except Exception as exc:
            raise StorageError(f"S3 list uploads s3://{self._bucket}/{root}: {exc}") from exc
        return found

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort one incomplete multipart upload (its parts are deleted)."""
        try:
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key(key), UploadId=upload_id)
        except Exception as exc:
            raise self._error("abort upload", key, exc) from exc
