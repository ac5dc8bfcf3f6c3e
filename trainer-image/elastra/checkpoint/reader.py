"""Reading checkpoints: manifests, verified byte ranges, and filling local slices.

Every byte read is checked against the manifest's chunk checksums before it is used. Reads prefer the
local tier when it holds the fragment's file at the committed size, else the durable tier; a local
copy that fails its checksum is re-read from the durable tier.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
import zlib
from dataclasses import dataclass, field

import torch

from elastra.checkpoint.format import (
    ITEMSIZE,
    MANIFEST,
    FormatError,
    Fragment,
    Manifest,
    parse_manifest,
    step_dir,
)
from elastra.checkpoint.geometry import Box, relative, row_major_strides
from elastra.checkpoint.plan import Read, plan_reads
from elastra.checkpoint.state import ST_TO_TORCH
from elastra.storage import NotFoundError, Storage, StorageError, join_key

log = logging.getLogger(__name__)


class ChecksumError(FormatError):
    """Bytes read from storage do not match the manifest's checksum."""


def read_manifest(storage: Storage, step: int) -> Manifest:
    """The validated manifest of `step` in `storage`; NotFoundError if the step is not committed."""
    manifest = parse_manifest(storage.get(join_key(step_dir(step), MANIFEST)))
    if manifest.step != step:
        raise FormatError(f"manifest of {step_dir(step)} says step {manifest.step}")
    return manifest


def verify(data: bytes, fragment: Fragment, byte_start: int, chunk: int) -> None:
    """Check the chunk checksums of `data`, the fragment's bytes from chunk-aligned `byte_start`."""
    for i, pos in enumerate(range(0, max(len(data), 1), chunk)):
        index = byte_start // chunk + i
        if zlib.crc32(data[pos : pos + chunk]) != fragment.checksums[index]:
            raise ChecksumError(
                f"{fragment.file}: checksum mismatch in bytes [{fragment.offset + byte_start + pos}, "
                f"+{min(chunk, len(data) - pos)}) of fragment {fragment.box}"
            )


@dataclass(slots=True)
class Sources:
    """Where the files of one checkpoint can be read from, local tier first."""

    manifest: Manifest
    durable: Storage
    local: Storage | None = None
    bytes_by_tier: dict[str, int] = field(default_factory=lambda: {"local": 0, "durable": 0})
    _local_ok: dict[str, bool] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _has_local(self, file: str) -> bool:
        if self.local is None:
            return False
        with self._lock:
            if file not in self._local_ok:
                key = join_key(step_dir(self.manifest.step), file)
                try:
                    self._local_ok[file] = self.local.size(key) == self.manifest.files[file]
                except StorageError:
                    self._local_ok[file] = False
            return self._local_ok[file]

    def fetch(self, fragment: Fragment, start: int, end: int) -> bytes:
        """Verified bytes `[start, end)` of a fragment (chunk-aligned `start`)."""
        key = join_key(step_dir(self.manifest.step), fragment.file)
        absolute = (fragment.offset + start, fragment.offset + end)
        if self._has_local(fragment.file):
            assert self.local is not None
            try:
                data = self.local.get_range(key, *absolute)
                verify(data, fragment, start, self.manifest.chunk_bytes)
                self._count("local", len(data))
                return data
            except (StorageError, ChecksumError) as exc:
                log.warning("local tier copy unusable, reading the durable tier instead: %s", exc)
        try:
            data = self.durable.get_range(key, *absolute)
        except NotFoundError as exc:
            raise FormatError(f"committed checkpoint is missing a shard file: {exc}") from exc
        verify(data, fragment, start, self.manifest.chunk_bytes)
        self._count("durable", len(data))
        return data

    def _count(self, tier: str, n: int) -> None:
        with self._lock:
            self.bytes_by_tier[tier] += n


def _as_tensor(data: bytes, dtype: str) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a read-only buffer: we only read from it
        return (
            torch.frombuffer(data, dtype=ST_TO_TORCH[dtype])
            if data
            else torch.empty(0, dtype=ST_TO_TORCH[dtype])
        )


def place(dst: torch.Tensor, target: Box, read: Read, data: bytes, dtype: str) -> None:
    """Copy the overlap of `read` from `data` into `dst`, the tensor holding `target`."""
    src_flat = _as_tensor(data, dtype)
    frag = read.fragment
    strides = row_major_strides(frag.box.shape)
    rel_src = relative(read.overlap, frag.box)
    first = sum(r * s for r, s in zip(rel_src, strides, strict=True)) - read.element_offset
    src = src_flat.as_strided(read.overlap.shape, strides, first)
    rel_dst = relative(read.overlap, target)
    if dst.shape != target.shape:  # an N-d target filled through its flat range
        dst = dst.reshape(-1)
    index = tuple(slice(r, r + n) for r, n in zip(rel_dst, read.overlap.shape, strict=True))
    dst[index].copy_(src)


def read_box(sources: Sources, path: str, target: Box, layout: str, pool: object = None) -> torch.Tensor:
    """A new tensor (saved dtype, shaped like `target`) holding that box of tensor `path`, verified."""
    entry = sources.manifest.tensors.get(path)
    if entry is None:
        raise FormatError(f"checkpoint of step {sources.manifest.step} has no tensor {path!r}")
    if layout == "boxes" and entry.layout == "boxes" and len(target.shape) != len(entry.shape):
        raise FormatError(f"{path}: saved with shape {entry.shape}, target slice {target} has another rank")
    space = (math.prod(entry.shape),) if layout == "flat" else entry.shape
    if not target.within(space):
        raise FormatError(f"{path}: target slice {target} does not fit the saved shape {entry.shape}")
    out = torch.empty(target.shape, dtype=ST_TO_TORCH[entry.dtype])
    in_space, reads = plan_reads(entry, target, layout, sources.manifest.chunk_bytes)
    datas = (
        list(pool.map(lambda r: sources.fetch(r.fragment, r.byte_start, r.byte_end), reads))  # type: ignore[attr-defined]
        if pool is not None
        else [sources.fetch(r.fragment, r.byte_start, r.byte_end) for r in reads]
    )
    for read, data in zip(reads, datas, strict=True):
        place(out, in_space, read, data, entry.dtype)
    return out


def verify_all(sources: Sources) -> list[str]:
    """Read every fragment of a checkpoint in full; the problems found (empty when all is well)."""
    problems = []
    for path, entry in sorted(sources.manifest.tensors.items()):
        for fragment in entry.fragments:
            try:
                sources.fetch(fragment, 0, fragment.length)
            except (FormatError, StorageError) as exc:
                problems.append(f"{path}: {exc}")
    return problems


def itemsize(dtype: str) -> int:
    return ITEMSIZE[dtype]
