"""Staging for the memory tier: the staging buffer is the snapshot's shard file itself.

The file tier stages into a reusable host buffer and then writes it to its file: two copies of the
state per save. In the memory tier the file lives in memory too (tmpfs), so that second copy buys
nothing. `FileStaging` instead maps a fresh file of the pod's memory store (allocated and faulted in
up front, so a full volume fails here with ENOSPC rather than with SIGBUS in the copy) and stages into
that mapping; the store's `put_parts` then `adopt`s it, a rename into place, and the state has been
copied once. Each save gets a new file: the previous snapshot's files stay untouched until the new one
commits. The next save's file is mapped right after a commit, on the background thread
(`preallocate`), so the training thread's stall is the copy alone, into resident pages, as with the
file tier's reused buffer: the store then holds one snapshot plus that file, the same memory the
reused staging buffer took in the worker. Where no file can be mapped (the volume is full) or on CUDA
(the buffer must be pinned), it stages as the file tier does.

Files are named `.staging-r<local rank>-<id>` in the store's root; one that outlived its worker (a
kill during a save) is removed when the next worker of that local rank starts (`remove_leftovers`).
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import uuid
from pathlib import Path

import torch

from elastra.checkpoint.staging import StagingBuffer
from elastra.storage.memory import MemoryStore


def _address(view: memoryview) -> int | None:
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(view))
    except (TypeError, ValueError):  # read-only or empty
        return None


class FileStaging(StagingBuffer):
    """Stages each save into a new mapped file of `store`; not thread-safe, as `StagingBuffer`."""

    def __init__(self, store: MemoryStore, local_rank: int) -> None:
        super().__init__()
        self._store = store
        self._prefix = f".staging-r{local_rank}-"
        self._file: Path | None = None
        """The mapped file backing `_buffer`, until it is adopted or discarded."""
        self._last_nbytes = 0

    def remove_leftovers(self) -> None:
        """Delete staging files of this local rank that a killed worker left behind."""
        root = Path(self._store.uri)
        for path in root.glob(self._prefix + "*") if root.is_dir() else ():
            path.unlink(missing_ok=True)

    def _ensure(self, nbytes: int, pin: bool) -> torch.Tensor:
        if self._file is not None and not pin and self._buffer.numel() >= nbytes:
            return self._buffer  # preallocated after the previous commit (or left by a failed save)
        self.discard()
        if pin or nbytes == 0:
            return super()._ensure(nbytes, pin)
        try:
            return self._map_new(nbytes)
        except OSError:  # the volume is full: stage in process memory; the write then fails cleanly
            return super()._ensure(nbytes, pin)

    def preallocate(self) -> None:
        """Map the next save's file now, the size of the last one (off the training thread: allocating
        and faulting in tmpfs pages costs about as much as the copy itself). Never raises."""
        if self._file is None and self._last_nbytes:
            with contextlib.suppress(OSError):
                self._map_new(self._last_nbytes)

    def _map_new(self, nbytes: int) -> torch.Tensor:
        root = Path(self._store.uri)
        root.mkdir(parents=True, exist_ok=True)
        path = root / f"{self._prefix}{uuid.uuid4().hex[:12]}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)  # as the file tier
        try:
            os.posix_fallocate(fd, 0, nbytes)
            mapping = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        self._file = path
        self._buffer = torch.frombuffer(mapping, dtype=torch.uint8)  # keeps `mapping` alive
        self._last_nbytes = nbytes
        self.allocations += 1
        return self._buffer

    def adopt(self, key: str, parts: list[memoryview]) -> bool:
        """When `parts` is exactly the staged file (one view from the start of the mapping), make it
        `key` of the store by a rename, cut to its length, and forget it: True. Else False."""
        if self._file is None or len(parts) != 1 or not parts[0].nbytes:
            return False
        if _address(parts[0]) != self._buffer.data_ptr():
            return False
        os.truncate(self._file, parts[0].nbytes)
        self._store.adopt(key, str(self._file))
        self._file = None
        self._buffer = torch.empty(0, dtype=torch.uint8)  # the mapping goes with its last view
        return True

    def discard(self) -> None:
        """Drop the current staging file, if a save did not adopt it (it failed, or was skipped)."""
        if self._file is not None:
            self._file.unlink(missing_ok=True)
            self._file = None
            self._buffer = torch.empty(0, dtype=torch.uint8)
