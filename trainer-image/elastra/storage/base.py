"""The narrow storage protocol every tier implements, and its errors.

Keys are `/`-separated relative paths (`step-10/rank-00000.safetensors`); a tier maps them onto its own
root (a directory, or an S3 bucket and prefix). A tier never interprets what it stores.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


class StorageError(Exception):
    """A tier failed to do what was asked (I/O error, S3 error after retries)."""


class NotFoundError(StorageError):
    """The key does not exist in the tier."""


@runtime_checkable
class Storage(Protocol):
    """One storage tier. All methods are blocking and thread-safe."""

    uri: str
    """Where the tier's root is: a directory path or `s3://bucket/prefix`."""

    def put_bytes(self, key: str, data: bytes | memoryview) -> None:
        """Write `data` under `key` atomically: readers see the old object, no object, or all of it."""
        ...

    def put_parts(self, key: str, parts: list[memoryview]) -> None:
        """Write the concatenation of `parts` under `key` atomically, without joining them in memory."""
        ...

    def put_file(self, key: str, path: str) -> None:
        """Copy the local file at `path` under `key` atomically."""
        ...

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes `[start, end)` of `key`; raises `NotFoundError`, or `StorageError` on a short read."""
        ...

    def read_into(self, key: str, start: int, parts: list[memoryview]) -> None:
        """Fill the writable byte buffers `parts`, in order, with the bytes of `key` from `start` on,
        in one ranged read and copying nothing on the way where the tier can; `NotFoundError`, or
        `StorageError` on a short read."""
        ...

    def get(self, key: str) -> bytes:
        """The whole object."""
        ...

    def size(self, key: str) -> int | None:
        """The object's size in bytes, or None when it does not exist."""
        ...

    def exists(self, key: str) -> bool:
        """Whether `key` exists."""
        ...

    def list_dirs(self) -> list[str]:
        """The names of the top-level 'directories' (first key components) under the root."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Every key under `prefix` (a directory name such as `step-10`), relative to the root."""
        ...

    def delete(self, key: str) -> None:
        """Delete one key; no error when it does not exist."""
        ...

    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under `prefix` (a directory name such as `step-10`)."""
        ...


def join_key(*parts: str) -> str:
    """Join key components with `/`, refusing components that could escape the root."""
    for part in parts:
        if not part or part in {".", ".."} or "/" in part or "\\" in part:
            raise ValueError(f"invalid storage key component {part!r}")
    return "/".join(parts)


def check_key(key: str) -> str:
    """Validate a `/`-separated key (from untrusted manifests too): no absolute paths, no `..`."""
    join_key(*key.split("/"))
    return key
