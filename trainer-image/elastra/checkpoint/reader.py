"""Reading checkpoints: manifests, verified byte ranges, and filling local slices.

Every byte read is checked against the manifest's chunk checksums before it is used. Reads prefer the
local tier when it holds the fragment's file at the committed size, else the durable tier; a local
copy that fails its checksum is re-read from the durable tier.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from elastra.checkpoint.checksum import crc32
from elastra.checkpoint.format import (
    ITEMSIZE,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    FormatError,
    Fragment,
    Manifest,
    parse_manifest,
    step_dir,
)
from elastra.checkpoint.geometry import Box, covering_element_range, relative, row_major_strides
from elastra.checkpoint.plan import Read, plan_reads
from elastra.checkpoint.state import ST_TO_TORCH
from elastra.storage import NotFoundError, Storage, StorageError, join_key

log = logging.getLogger(__name__)

MAX_RUN_BYTES = 1 << 30
"""Adjacent direct reads of one file are merged into one ranged read up to about this size."""


class ChecksumError(FormatError):
    """Bytes read from storage do not match the manifest's checksum."""


def read_manifest(storage: Storage, step: int) -> Manifest:
    """The validated manifest of `step` in `storage`; NotFoundError if the step is not committed.

    Its size is checked before it is read (`MAX_MANIFEST_BYTES`)."""
    key = join_key(step_dir(step), MANIFEST)
    size = storage.size(key)
    if size is None:
        raise NotFoundError(f"{storage.uri}/{key} does not exist")
    if size > MAX_MANIFEST_BYTES:
        raise FormatError(
            f"step {step}, field '(document)': {size} bytes, at most {MAX_MANIFEST_BYTES} allowed"
        )
    return parse_manifest(storage.get(key), step)


def verify(data: bytes | bytearray | memoryview, fragment: Fragment, byte_start: int, chunk: int) -> None:
    """Check the chunk checksums of `data`, the fragment's bytes from chunk-aligned `byte_start`."""
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) or data.format != "B" else data
    for i, pos in enumerate(range(0, max(view.nbytes, 1), chunk)):
        index = byte_start // chunk + i
        if crc32(view[pos : pos + chunk]) != fragment.checksums[index]:
            raise ChecksumError(
                f"{fragment.file}: checksum mismatch in bytes [{fragment.offset + byte_start + pos}, "
                f"+{min(chunk, view.nbytes - pos)}) of fragment {fragment.box}"
            )


@dataclass(frozen=True, slots=True)
class DirectRead:
    """Whole checksum chunks of a fragment read straight into their final place, `out`."""

    fragment: Fragment
    start: int
    """First byte, relative to the fragment's first byte; chunk-aligned."""
    out: memoryview
    """Where the bytes go (writable, `out.nbytes` of them): the target tensor's own memory."""

    @property
    def absolute(self) -> int:
        """The first byte's offset in the shard file."""
        return self.fragment.offset + self.start


@dataclass(slots=True)
class Sources:
    """Where the files of one checkpoint can be read from, local tier first."""

    manifest: Manifest
    durable: Storage
    local: Storage | None = None
    bytes_by_tier: dict[str, int] = field(default_factory=lambda: {"local": 0, "durable": 0})
    _local_ok: dict[str, bool] = field(default_factory=dict)
    _durable_ok: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _check_durable(self, file: str) -> None:
        """Refuse a shard file whose real size is not the one the manifest declares, before the first
        read of it: every offset and length checked against the declared size is then bounded by the
        real one (no huge buffer for a lie)."""
        with self._lock:
            if file in self._durable_ok:
                return
        key = join_key(step_dir(self.manifest.step), file)
        try:
            real = self.durable.size(key)
        except NotFoundError:
            real = None
        declared = self.manifest.files[file]
        if real is None:
            raise FormatError(f"step {self.manifest.step}, file {file!r}: committed but missing from storage")
        if real != declared:
            raise FormatError(
                f"step {self.manifest.step}, field 'files[{file!r}]': declares {declared} bytes, "
                f"storage holds {real}"
            )
        with self._lock:
            self._durable_ok.add(file)

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

    def fetch(self, fragment: Fragment, start: int, end: int) -> bytearray:
        """Verified bytes `[start, end)` of a fragment (chunk-aligned `start`); the file's real size
        is checked before the buffer is allocated."""
        self._check_durable(fragment.file)
        out = bytearray(end - start)
        self.fetch_into(fragment, start, memoryview(out))
        return out

    def fetch_into(self, fragment: Fragment, start: int, out: memoryview) -> None:
        """Fill `out` with the verified bytes of a fragment from chunk-aligned `start`."""
        self.fetch_run([DirectRead(fragment, start, out)])

    def fetch_run(self, run: Sequence[DirectRead]) -> None:
        """Fill every `out` of `run` (byte-adjacent reads of one file, in order) with one ranged read,
        then verify each against its fragment's checksums.

        On a checksum mismatch the `out` buffers hold the bad bytes and ChecksumError is raised (after
        the local tier's copy failed, the durable tier's is read into them instead)."""
        file, chunk = run[0].fragment.file, self.manifest.chunk_bytes
        key = join_key(step_dir(self.manifest.step), file)
        self._check_durable(file)
        parts = [r.out for r in run]
        total = sum(p.nbytes for p in parts)
        if self._has_local(file):
            assert self.local is not None
            try:
                self.local.read_into(key, run[0].absolute, parts)
                for r in run:
                    verify(r.out, r.fragment, r.start, chunk)
                self._count("local", total)
                return
            except (StorageError, ChecksumError) as exc:
                log.warning("local tier copy unusable, reading the durable tier instead: %s", exc)
        try:
            self.durable.read_into(key, run[0].absolute, parts)
        except NotFoundError as exc:
            raise FormatError(f"committed checkpoint is missing a shard file: {exc}") from exc
        for r in run:
            verify(r.out, r.fragment, r.start, chunk)
        self._count("durable", total)

    def _count(self, tier: str, n: int) -> None:
        with self._lock:
            self.bytes_by_tier[tier] += n


def _as_tensor(data: bytes | bytearray, dtype: str) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a read-only buffer: we only read from it
        return (
            torch.frombuffer(data, dtype=ST_TO_TORCH[dtype])
            if data
            else torch.empty(0, dtype=ST_TO_TORCH[dtype])
        )


def place(dst: torch.Tensor, target: Box, read: Read, data: bytes | bytearray, dtype: str) -> None:
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


@dataclass(frozen=True, slots=True)
class ReadTask:
    """One read of saved bytes and what is done with them; `run` raises FormatError/StorageError."""

    file: str
    """Shard file read."""
    start: int
    """First byte read, in the file: tasks run in file order, so each file is read front to back."""
    run: Callable[[], None]


def _contiguous_range(shape: tuple[int, ...], box: Box, within: Box) -> tuple[int, int] | None:
    """The flat element range `box` covers inside the row-major `within` (of `shape`), if contiguous."""
    first, end = covering_element_range(shape, relative(box, within), box.shape)
    return (first, end) if end - first == box.numel else None


def fill_tasks(
    sources: Sources, path: str, target: Box, layout: str, dst: torch.Tensor
) -> list[ReadTask | DirectRead]:
    """Reads that together fill `dst` (holding `target` of tensor `path`) with verified saved bytes.

    `dst` must be a contiguous CPU tensor of the saved dtype. Where an overlap is one contiguous byte
    run in both the saved fragment and `dst`, its whole checksum chunks are a `DirectRead` straight
    into `dst`'s memory, verified there (no intermediate copy); only partial chunks at its ends, and
    overlaps that are not contiguous, are `ReadTask`s through a scratch buffer. They write disjoint
    parts of `dst`; `run_reads` runs them."""
    entry = sources.manifest.tensors.get(path)
    if entry is None:
        raise FormatError(f"checkpoint of step {sources.manifest.step} has no tensor {path!r}")
    if layout == "boxes" and entry.layout == "boxes" and len(target.shape) != len(entry.shape):
        raise FormatError(f"{path}: saved with shape {entry.shape}, target slice {target} has another rank")
    space = (math.prod(entry.shape),) if layout == "flat" else entry.shape
    if not target.within(space):
        raise FormatError(f"{path}: target slice {target} does not fit the saved shape {entry.shape}")
    if dst.device.type != "cpu" or not dst.is_contiguous() or dst.dtype != ST_TO_TORCH[entry.dtype]:
        raise ValueError(f"{path}: fill target must be a contiguous CPU {entry.dtype} tensor")
    in_space, reads = plan_reads(entry, target, layout, sources.manifest.chunk_bytes)
    raw: Any = dst.reshape(-1).view(torch.uint8).numpy()  # shares dst's memory
    dst_bytes = memoryview(raw) if dst.numel() else memoryview(b"")
    tasks: list[ReadTask | DirectRead] = []
    for read in reads:
        tasks += _read_tasks(sources, in_space, read, dst=dst, dst_bytes=dst_bytes, dtype=entry.dtype)
    return tasks


def _read_tasks(
    sources: Sources, in_space: Box, read: Read, *, dst: torch.Tensor, dst_bytes: memoryview, dtype: str
) -> list[ReadTask | DirectRead]:
    frag, chunk, size = read.fragment, sources.manifest.chunk_bytes, ITEMSIZE[dtype]
    in_fragment = _contiguous_range(frag.box.shape, read.overlap, frag.box)
    in_dst = _contiguous_range(in_space.shape, read.overlap, in_space)

    def task(start: int, run: Callable[[], None]) -> ReadTask:
        return ReadTask(frag.file, frag.offset + start, run)

    def generic() -> None:
        place(dst, in_space, read, sources.fetch(frag, read.byte_start, read.byte_end), dtype)

    if in_fragment is None or in_dst is None:
        return [task(read.byte_start, generic)]
    lo, hi, at = in_fragment[0] * size, in_fragment[1] * size, in_dst[0] * size
    whole_lo = -(-lo // chunk) * chunk
    whole_hi = hi if hi == frag.length else hi // chunk * chunk
    if whole_lo >= whole_hi:
        return [task(read.byte_start, generic)]

    def partial_chunk(chunk_start: int, a: int, b: int) -> ReadTask:
        def run() -> None:  # a partial chunk: read and verify all of it, keep bytes [a, b)
            data = sources.fetch(frag, chunk_start, min(chunk_start + chunk, frag.length))
            dst_bytes[at + a - lo : at + b - lo] = memoryview(data)[a - chunk_start : b - chunk_start]

        return task(chunk_start, run)

    tasks: list[ReadTask | DirectRead] = [
        DirectRead(frag, whole_lo, dst_bytes[at + whole_lo - lo : at + whole_hi - lo])
    ]
    if lo < whole_lo:
        tasks.append(partial_chunk(whole_lo - chunk, lo, whole_lo))
    if whole_hi < hi:
        tasks.append(partial_chunk(whole_hi, whole_hi, hi))
    return tasks


def read_box(
    sources: Sources, path: str, target: Box, layout: str, pool: concurrent.futures.Executor | None = None
) -> torch.Tensor:
    """A new tensor (saved dtype, shaped like `target`) holding that box of tensor `path`, verified."""
    entry = sources.manifest.tensors.get(path)
    if entry is None:
        raise FormatError(f"checkpoint of step {sources.manifest.step} has no tensor {path!r}")
    out = torch.empty(target.shape, dtype=ST_TO_TORCH[entry.dtype])
    run_reads(sources, fill_tasks(sources, path, target, layout, out), pool)
    return out


def coalesce(reads: list[ReadTask | DirectRead], sources: Sources) -> list[ReadTask]:
    """One task per run of byte-adjacent direct reads of a file (one ranged read each: the fewest
    syscalls, and the kernel sees one long sequential read), plus the other tasks; in file order."""
    direct = sorted(
        (r for r in reads if isinstance(r, DirectRead)), key=lambda r: (r.fragment.file, r.absolute)
    )
    runs: list[list[DirectRead]] = []
    for read in direct:
        last = runs[-1][-1] if runs else None
        if (
            last is not None
            and last.fragment.file == read.fragment.file
            and last.absolute + last.out.nbytes == read.absolute
            and sum(r.out.nbytes for r in runs[-1]) < MAX_RUN_BYTES
        ):
            runs[-1].append(read)
        else:
            runs.append([read])
    tasks = [r for r in reads if isinstance(r, ReadTask)]
    tasks += [
        ReadTask(run[0].fragment.file, run[0].absolute, partial(sources.fetch_run, run)) for run in runs
    ]
    return sorted(tasks, key=lambda t: (t.file, t.start))


def run_reads(
    sources: Sources, reads: list[ReadTask | DirectRead], pool: concurrent.futures.Executor | None
) -> None:
    """Run `reads` (coalesced; on `pool` when given); re-raise the first failure once all finished."""
    tasks = coalesce(reads, sources)
    if pool is None:
        for task in tasks:
            task.run()
        return
    futures = [pool.submit(task.run) for task in tasks]
    concurrent.futures.wait(futures)
    for future in futures:
        future.result()


VERIFY_READ_BYTES = 64 << 20
"""`verify_all` reads each fragment in pieces of about this size (whole checksum chunks)."""


def verify_all(sources: Sources) -> list[str]:
    """Read every fragment of a checkpoint; the problems found (empty when all is well).

    Memory stays bounded by `VERIFY_READ_BYTES` (or one checksum chunk) whatever the sizes say."""
    problems = []
    chunk = sources.manifest.chunk_bytes
    step = max(chunk, VERIFY_READ_BYTES // chunk * chunk)
    for path, entry in sorted(sources.manifest.tensors.items()):
        for fragment in entry.fragments:
            try:
                for start in range(0, max(fragment.length, 1), step):
                    sources.fetch(fragment, start, min(start + step, fragment.length))
            except (FormatError, StorageError) as exc:
                problems.append(f"{path}: {exc}")
    return problems


def itemsize(dtype: str) -> int:
    return ITEMSIZE[dtype]
