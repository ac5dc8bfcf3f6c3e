"""The file tier: a directory on a local or network file system.

Writes go to a temporary file in the same directory, are fsynced, renamed into place, and the directory
is fsynced, so a crash leaves either the old state or the complete file (plus a `.tmp-*` leftover that
retention removes together with its step directory). Reads use `os.pread` / `os.preadv` of only the
bytes asked for, the latter straight into the caller's memory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from elastra.storage.base import NotFoundError, StorageError, check_key

_COPY_CHUNK = 8 << 20
_MAX_IOVECS = 512
"""Buffers per `preadv` call (Linux allows 1024); the kernel returns at most about 2 GiB per call and
the loop continues from where a short return left off."""


def make_private(path: str) -> None:
    """Create `path` (mode 0700) or narrow an existing one we own to 0700: a node-local tier holds
    one job's checkpoints and nobody else on the node needs to read them."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    with contextlib.suppress(PermissionError):  # a hostPath made by someone else (root): keep its mode
        os.chmod(path, 0o700)


class LocalStorage:
    """A `Storage` rooted at a directory (created on first write)."""

    def __init__(self, root: str) -> None:
        self.uri = root
        self._root = Path(root)

    def _path(self, key: str) -> Path:
        return self._root / check_key(key)

    def path_of(self, key: str) -> str:
        """The file system path of `key`."""
        return str(self._path(key))

    def _open_for_reading(self, key: str) -> int:
        """A read-only descriptor of `key`'s regular file (the caller closes it); NotFoundError if
        absent. Every component below the root is opened without following symlinks, and anything but
        a regular file (a symlink, a FIFO, a device, a directory) is refused: a key named in an
        untrusted manifest can only ever read a file that really lies in this tier."""
        parts = check_key(key).split("/")
        try:
            dir_fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError as exc:
            raise NotFoundError(f"{self._path(key)} does not exist") from exc
        except OSError as exc:
            raise StorageError(f"opening {self._root}: {exc}") from exc
        try:
            for name in parts[:-1]:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
                os.close(dir_fd)
                dir_fd = fd
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except FileNotFoundError as exc:
            raise NotFoundError(f"{self._path(key)} does not exist") from exc
        except OSError as exc:  # ELOOP: a symlink; ENOTDIR: a symlink or file where a directory was
            raise StorageError(f"refusing {self._path(key)}: not a regular file ({exc.strerror})") from exc
        finally:
            os.close(dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StorageError(f"refusing {self._path(key)}: not a regular file")
        return fd

    def _atomic_write(self, key: str, write: Callable[[BinaryIO], object]) -> None:
        path = self._path(key)
        self._make_dirs(path.parent)
        tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"writing {path}: {exc}") from exc
        except BaseException:  # e.g. a source that fails mid-copy: leave no temporary file behind
            tmp.unlink(missing_ok=True)
            raise

    @staticmethod
    def _make_dirs(directory: Path) -> None:
        """Create `directory` and its missing parents, fsyncing the parent of each one created, so a new
        step directory survives a crash together with the files renamed into it."""
        missing = []
        probe = directory
        while not probe.is_dir():
            missing.append(probe)
            if probe.parent == probe:
                break
            probe = probe.parent
        try:
            for new in reversed(missing):
                new.mkdir(exist_ok=True)
                _fsync_dir(new.parent)
        except OSError as exc:
            raise StorageError(f"creating {directory}: {exc}") from exc

    def put_bytes(self, key: str, data: bytes | memoryview) -> None:
        self._atomic_write(key, lambda f: f.write(data))

    def put_parts(self, key: str, parts: list[memoryview]) -> None:
        def write(f: BinaryIO) -> None:
            for part in parts:
                f.write(part)

        self._atomic_write(key, write)

    def put_file(self, key: str, path: str) -> None:
        def write(f: BinaryIO) -> None:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, f, _COPY_CHUNK)

        self._atomic_write(key, write)

    def get_range(self, key: str, start: int, end: int) -> bytes:
        if start < 0 or end < start:
            raise StorageError(f"invalid byte range [{start}, {end}) for {key}")
        fd = self._open_for_reading(key)
        try:
            chunks: list[bytes] = []
            offset = start
            while offset < end:
                chunk = os.pread(fd, end - offset, offset)
                if not chunk:
                    raise StorageError(f"{self._path(key)}: short read at byte {offset}, wanted up to {end}")
                chunks.append(chunk)
                offset += len(chunk)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except OSError as exc:
            raise StorageError(f"reading {self._path(key)}: {exc}") from exc
        finally:
            os.close(fd)

    def read_into(self, key: str, start: int, parts: list[memoryview]) -> None:
        if start < 0:
            raise StorageError(f"invalid byte offset {start} for {key}")
        fd = self._open_for_reading(key)
        try:
            pending = [p.cast("B") if p.format != "B" else p for p in parts if p.nbytes]
            offset = start
            while pending:
                count = os.preadv(fd, pending[:_MAX_IOVECS], offset)
                if count == 0:
                    raise StorageError(f"{self._path(key)}: short read at byte {offset}")
                offset += count
                while pending and count >= pending[0].nbytes:  # drop the buffers filled completely
                    count -= pending.pop(0).nbytes
                if count:
                    pending[0] = pending[0][count:]
        except OSError as exc:
            raise StorageError(f"reading {self._path(key)}: {exc}") from exc
        finally:
            os.close(fd)

    def get(self, key: str) -> bytes:
        fd = self._open_for_reading(key)
        try:
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read()
        except OSError as exc:
            raise StorageError(f"reading {self._path(key)}: {exc}") from exc
        finally:
            os.close(fd)

    def size(self, key: str) -> int | None:
        """The size of `key`'s regular file; None when absent; StorageError for anything else there."""
        try:
            fd = self._open_for_reading(key)
        except NotFoundError:
            return None
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def exists(self, key: str) -> bool:
        try:
            return self.size(key) is not None
        except StorageError:
            return False

    def list_dirs(self) -> list[str]:
        if not self._root.is_dir():
            return []
        return sorted(p.name for p in self._root.iterdir() if p.is_dir() and not p.is_symlink())

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self._root)) for p in base.rglob("*") if p.is_file())

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"deleting {self._path(key)}: {exc}") from exc

    def delete_prefix(self, prefix: str) -> None:
        try:
            shutil.rmtree(self._path(prefix))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"deleting {self._path(prefix)}: {exc}") from exc


def _fsync_dir(directory: Path) -> None:
    """fsync a directory, making the names created or renamed in it durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
