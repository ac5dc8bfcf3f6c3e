"""The file tier: a directory on a local or network file system.

Writes go to a temporary file in the same directory, are fsynced, renamed into place, and the directory
is fsynced, so a crash leaves either the old state or the complete file (plus a `.tmp-*` leftover that
retention removes together with its step directory). A part whose address and file offset are aligned
to `DIRECT_IO_ALIGN` is written with `O_DIRECT` from the caller's memory, in one `pwrite` (the disk
reads it by DMA: no copy into the page cache, and no page cache filled with bytes nobody reads back);
the rest (a header, an unaligned tail) goes through the page cache, and one `fsync` makes both durable.
File systems without `O_DIRECT` (tmpfs) are written through the page cache. Files are copied with
`copy_file_range` (in the kernel, no user-space buffer). Reads use `os.pread` / `os.preadv` of only the
bytes asked for, the latter straight into the caller's memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

from elastra.storage.base import NotFoundError, StorageError, check_key

_COPY_CHUNK = 1 << 30
"""Bytes per `copy_file_range` call (the kernel may do fewer; the loop goes on from there)."""
_MAX_IOVECS = 512
"""Buffers per `preadv` call (Linux allows 1024); the kernel returns at most about 2 GiB per call and
the loop continues from where a short return left off."""
DIRECT_IO_ALIGN = 4096
"""Address, offset and length alignment for `O_DIRECT` writes (the page size: a multiple of every
common disk's logical block size)."""
DIRECT_IO_MIN_BYTES = 1 << 20
"""Parts smaller than this go through the page cache: direct I/O pays off for bulk data only."""
_O_DIRECT = getattr(os, "O_DIRECT", 0)


def _address(view: memoryview) -> int | None:
    """The address of a writable buffer's first byte; None for read-only buffers (bytes)."""
    if view.readonly or not view.c_contiguous:
        return None
    if view.nbytes == 0:
        return None
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data.nbytes:
        count = os.pwrite(fd, data, offset)
        if count <= 0:
            raise OSError(errno.EIO, f"pwrite wrote {count} bytes")
        data = data[count:]
        offset += count


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
        self.direct_io = bool(_O_DIRECT)
        """Whether aligned parts are written with `O_DIRECT`; turned off for good after the file
        system refuses it once."""
        self.durable = True
        """Whether writes are fsynced (files and the directories they are renamed into); a tier in
        memory (tmpfs) has nothing to flush."""

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

    def _atomic_write(self, key: str, write: Callable[[int, str], object]) -> None:
        """`write(fd, tmp_path)` fills a fresh temporary file; then fsync, rename, fsync the directory
        (the fsyncs only when `durable`)."""
        path = self._path(key)
        self._make_dirs(path.parent)
        tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                write(fd, str(tmp))
                if self.durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            if self.durable:
                _fsync_dir(path.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"writing {path}: {exc}") from exc
        except BaseException:  # e.g. a source that fails mid-copy: leave no temporary file behind
            tmp.unlink(missing_ok=True)
            raise

    def _make_dirs(self, directory: Path) -> None:
        """Create `directory` and its missing parents, fsyncing (when `durable`) the parent of each one
        created, so a new step directory survives a crash together with the files renamed into it."""
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
                if self.durable:
                    _fsync_dir(new.parent)
        except OSError as exc:
            raise StorageError(f"creating {directory}: {exc}") from exc

    def put_bytes(self, key: str, data: bytes | memoryview) -> None:
        self.put_parts(key, [memoryview(data)])

    def put_parts(self, key: str, parts: list[memoryview]) -> None:
        def write(fd: int, tmp: str) -> None:
            direct_fd: int | None = None
            offset = 0
            try:
                for part in parts:
                    view = memoryview(part)  # TypeError for what is not a buffer: nothing is left behind
                    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
                    bulk = 0
                    address = _address(view) if self.direct_io else None
                    if address is not None and (address | offset) % DIRECT_IO_ALIGN == 0:
                        bulk = view.nbytes - view.nbytes % DIRECT_IO_ALIGN
                    if bulk >= DIRECT_IO_MIN_BYTES:
                        if direct_fd is None:
                            direct_fd = self._open_direct(tmp)
                        if direct_fd is not None and self._write_direct(direct_fd, view[:bulk], offset):
                            _pwrite_all(fd, view[bulk:], offset + bulk)
                            offset += view.nbytes
                            continue
                    _pwrite_all(fd, view, offset)
                    offset += view.nbytes
            finally:
                if direct_fd is not None:
                    os.close(direct_fd)

        self._atomic_write(key, write)

    def _open_direct(self, tmp: str) -> int | None:
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CLOEXEC | _O_DIRECT)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: this file system has no O_DIRECT
                raise
            self.direct_io = False
            return None

    def _write_direct(self, fd: int, view: memoryview, offset: int) -> bool:
        """Write aligned `view` at `offset` with direct I/O; False when the file system refuses it
        (EINVAL: an alignment it does not accept), and the caller rewrites the range through the page
        cache (a partial direct write is simply overwritten)."""
        try:
            _pwrite_all(fd, view, offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.direct_io = False
            return False
        return True

    def put_file(self, key: str, path: str) -> None:
        def write(fd: int, _tmp: str) -> None:
            with open(path, "rb") as src:
                size = os.fstat(src.fileno()).st_size
                try:
                    copied = 0
                    while copied < size:
                        count = os.copy_file_range(src.fileno(), fd, min(_COPY_CHUNK, size - copied))
                        if count == 0:
                            break
                        copied += count
                    if copied == size:
                        return
                    os.lseek(fd, 0, os.SEEK_SET)
                    os.ftruncate(fd, 0)
                except OSError as exc:  # EXDEV on old kernels, ENOSYS, EINVAL on some file systems
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                src.seek(0)
                os.lseek(fd, 0, os.SEEK_SET)
                with os.fdopen(os.dup(fd), "wb", closefd=True) as out:
                    shutil.copyfileobj(src, out, 8 << 20)

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
