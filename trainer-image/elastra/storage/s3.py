"""The S3 tier, with boto3.

Uploads use boto3's transfer manager: multipart above `multipart_threshold`, with parts sized to the
object (at least `part_size`, and large enough that `max_concurrency` threads upload one part each, so
a large object takes few requests), and botocore's `standard` retry mode (exponential backoff with
jitter) on every request. An S3 object appears only when its (multipart) upload completes, so a key is
never seen half-written. Reads are ranged GETs of only the bytes asked for; a large read is split into
up to `max_concurrency` ranged GETs in parallel, each streamed straight into the caller's memory.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import io
import os
import threading
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
    """Smallest size of one multipart part (a larger object gets larger parts: `part_bytes`)."""
    max_part_size: int = 64 << 20
    """Largest part, unless S3's 10,000-part limit needs more: the transfer manager holds up to 10
    parts of an upload from memory in flight, so this bounds that memory."""
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
        if self.max_part_size < self.part_size:
            raise ValueError(f"max_part_size {self.max_part_size} is below part_size {self.part_size}")
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


_MIB = 1 << 20
MAX_PARTS = 10_000
"""S3's limit on the parts of one multipart upload."""
MIN_RANGE_BYTES = 8 << 20
"""A read is split into parallel ranged GETs of at least this many bytes each."""


def part_bytes(size: int, options: S3Options) -> int:
    """The multipart part size for an object of `size` bytes (pure): `options.part_size` at least,
    large enough that `max_concurrency` parts cover the object (each upload thread sends one part,
    few requests) up to `options.max_part_size`, within S3's 10,000 parts, rounded up to a whole MiB."""
    per_thread = min(-(-size // options.max_concurrency), options.max_part_size)
    wanted = max(options.part_size, per_thread, -(-size // MAX_PARTS))
    return -(-wanted // _MIB) * _MIB


def split_views(views: list[memoryview], pieces: int, minimum: int) -> list[tuple[int, list[memoryview]]]:
    """`views` (consecutive bytes) cut into at most `pieces` runs of at least `minimum` bytes (the last
    may be shorter): `(offset of the run, its sub-views)` each (pure)."""
    total = sum(v.nbytes for v in views)
    size = max(minimum, -(-total // max(1, pieces)))
    runs: list[tuple[int, list[memoryview]]] = []
    current: list[memoryview] = []
    offset = filled = 0
    for whole in views:
        view = whole
        while view.nbytes:
            take = min(view.nbytes, size - filled)
            current.append(view[:take])
            view = view[take:]
            filled += take
            if filled == size:
                runs.append((offset, current))
                offset += filled
                current, filled = [], 0
    if current:
        runs.append((offset, current))
    return runs


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
        self._options = opts
        self._transfer_config = TransferConfig
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def _transfer(self, size: int) -> Any:
        return self._transfer_config(
            multipart_threshold=self._options.multipart_threshold,
            multipart_chunksize=part_bytes(size, self._options),
            max_concurrency=self._options.max_concurrency,
            use_threads=True,
        )

    def _readers(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self._options.max_concurrency, thread_name_prefix="elastra-s3-get"
                )
            return self._pool

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
            size = sum(memoryview(p).nbytes for p in parts)
            self._client.upload_fileobj(
                _PartsReader(parts), self._bucket, self._key(key), Config=self._transfer(size)
            )
        except Exception as exc:
            raise self._error("upload", key, exc) from exc

    def put_file(self, key: str, path: str) -> None:
        try:
            config = self._transfer(os.path.getsize(path))
            self._client.upload_file(path, self._bucket, self._key(key), Config=config)
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
        runs = split_views(views, self._options.max_concurrency, MIN_RANGE_BYTES)
        if len(runs) == 1:
            self._get_into(key, start, views)
            return
        futures = [self._readers().submit(self._get_into, key, start + offset, run) for offset, run in runs]
        for future in futures:
            future.result()  # the first failure raises; the others finish on their own

    def _get_into(self, key: str, start: int, views: list[memoryview]) -> None:
        """One ranged GET of the bytes that fill `views`, read from the socket straight into them."""
        wanted = sum(v.nbytes for v in views)
        try:
            response = self._client.get_object(
                Bucket=self._bucket, Key=self._key(key), Range=f"bytes={start}-{start + wanted - 1}"
            )
            body = response["Body"]
            got = 0
            for view in views:
                filled = 0
                while filled < view.nbytes:
                    count = body.readinto(view[filled:])
                    if not count:
                        raise StorageError(f"S3 ranged GET {key}: got {got + filled} bytes, wanted {wanted}")
                    filled += count
                got += filled
            body.close()
        except StorageError:
            raise
        except Exception as exc:
            raise self._error("ranged GET", key, exc) from exc

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
