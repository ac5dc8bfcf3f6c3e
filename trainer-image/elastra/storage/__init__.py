"""Storage tiers behind one narrow protocol: local files and S3. URIs are `str`."""

from __future__ import annotations

from elastra.storage.base import NotFoundError, Storage, StorageError, check_key, join_key
from elastra.storage.local import LocalStorage
from elastra.storage.s3 import S3Options, S3Storage, parse_s3_uri

__all__ = [
    "LocalStorage",
    "NotFoundError",
    "S3Options",
    "S3Storage",
    "Storage",
    "StorageError",
    "check_key",
    "join_key",
    "open_storage",
    "parse_s3_uri",
]


def open_storage(uri: str, s3: S3Options | None = None) -> Storage:
    """The tier for `uri`: `s3://bucket/prefix` is S3, anything else is a local directory path."""
    if uri.startswith("s3://"):
        return S3Storage(uri, s3)
    if "://" in uri:
        raise ValueError(
            f"unsupported checkpoint URI scheme: {uri!r} (use s3://bucket/prefix or a directory)"
        )
    return LocalStorage(uri)
