"""Staging: copy the pieces a rank writes into one reusable, preallocated host buffer.

The copy is the only part of a save that must happen before the training loop mutates its state. The
buffer is allocated (and touched, so its pages are resident) once and grown only when a save needs
more, so steady-state saves do no allocation and RSS stays flat. On CUDA the buffer is pinned and
copies run on a side stream that first waits for the training thread's current stream.

The buffer holds the whole shard file, header included, starting at a `DIRECT_IO_ALIGN`-aligned
address and padded to a multiple of it, so the file tier can hand it to the disk with direct I/O: the
staged bytes are the last copy the CPU makes (`LocalStorage.put_parts`).

Staging can checksum while it copies (`checksum_chunk`): each chunk is checksummed right after it is
copied, while it is still in the CPU cache, instead of in a second pass over the whole buffer. Lazy
staging does this (it runs off the training thread); eager staging copies only, so the training thread
waits for nothing but the copy, and the background thread checksums afterwards.

Staging is split in two so that the copy can run off the training thread (lazy staging):
`prepare` runs on the training thread (buffer, stream ordering), `copy` anywhere, once.

Restores go the other way: `fill_kind` says where a tensor's saved bytes are read to (in place, or
pinned host memory for a CUDA tensor, then one asynchronous host-to-device copy).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import torch

from elastra.checkpoint.checksum import crc32
from elastra.checkpoint.format import DIRECT_IO_ALIGN
from elastra.checkpoint.plan import RankWrites, checksum_chunks
from elastra.checkpoint.state import ST_TO_TORCH, TensorLeaf


class FillKind(enum.Enum):
    """Where a restore reads a tensor's saved bytes to."""

    IN_PLACE = "in-place"
    """The tensor's own memory (a contiguous CPU tensor of the saved dtype): no copy at all."""
    PINNED = "pinned"
    """Pinned host memory, then an asynchronous copy to the device (a CUDA tensor): pageable memory
    would make every copy synchronous and go through a driver bounce buffer at about half the speed."""
    SCRATCH = "scratch"
    """Pageable host memory, then a copy (a strided CPU tensor, another dtype, another device)."""


def fill_kind(device_type: str, contiguous: bool, same_dtype: bool) -> FillKind:
    """Where the restore of a tensor on `device_type` is read to. Pure."""
    if device_type == "cpu":
        return FillKind.IN_PLACE if contiguous and same_dtype else FillKind.SCRATCH
    return FillKind.PINNED if device_type == "cuda" else FillKind.SCRATCH


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


@dataclass(frozen=True, slots=True)
class StagingJob:
    """One prepared copy: what to copy where, and the CUDA stream (if any) it runs on."""

    writes: RankWrites
    sources: tuple[torch.Tensor, ...]
    """The live tensors, in `writes.pieces` order."""
    header: bytes
    """The shard file's header; its length is a multiple of `DIRECT_IO_ALIGN`."""
    buffer: torch.Tensor
    """The (pinned, on CUDA) uint8 host buffer: `DIRECT_IO_ALIGN`-aligned, at least the file's size
    rounded up to a multiple of it."""
    stream: torch.cuda.Stream | None
    """Side stream already ordered after the training thread's work; None on CPU."""
    checksum_chunk: int | None
    """Checksum each piece in chunks of this many bytes while copying; None: copy only."""


@dataclass(frozen=True, slots=True)
class Staged:
    """The staged shard file."""

    file: memoryview
    """The file's bytes (header, then data), a view of the aligned staging buffer."""
    data_start: int
    """Where the data section starts in `file` (the header's length)."""
    crcs: tuple[tuple[int, ...], ...] | None
    """Per piece (in `writes.pieces` order), the CRC-32 of each chunk, when staging computed them."""

    @property
    def data(self) -> memoryview:
        return self.file[self.data_start :]


class StagingBuffer:
    """One host buffer, reused across saves. Not thread-safe: one save stages at a time."""

    def __init__(self) -> None:
        self._buffer = torch.empty(0, dtype=torch.uint8)
        self._stream: torch.cuda.Stream | None = None
        self.allocations = 0
        """How many times the buffer was (re)allocated; stays 1 in steady state."""

    def _ensure(self, nbytes: int, pin: bool) -> torch.Tensor:
        if self._buffer.numel() < nbytes or (pin and not self._buffer.is_pinned()):
            self._buffer = torch.empty(0, dtype=torch.uint8)  # drop the old one first: peak stays 1x
            raw = torch.zeros(nbytes + DIRECT_IO_ALIGN, dtype=torch.uint8, pin_memory=pin)
            shift = -raw.data_ptr() % DIRECT_IO_ALIGN
            self._buffer = raw[shift : shift + nbytes]  # the view keeps `raw`'s storage alive
            self.allocations += 1
        return self._buffer

    def prepare(
        self,
        writes: RankWrites,
        leaves: dict[tuple[str, tuple[int, ...], tuple[int, ...]], TensorLeaf],
        header: bytes,
        *,
        checksum_chunk: int | None = None,
    ) -> StagingJob:
        """On the training thread: the buffer for `header` + `writes`, and on CUDA a side stream that
        will copy only after the work already queued on the current stream (the step that produced the
        state)."""
        if len(header) % DIRECT_IO_ALIGN:
            raise ValueError(f"header of {len(header)} bytes is not a multiple of {DIRECT_IO_ALIGN}")
        sources = tuple(leaves[placed.piece.key].local for placed in writes.pieces)
        on_cuda = any(t.is_cuda for t in sources)
        buffer = self._ensure(_round_up(len(header) + writes.data_bytes, DIRECT_IO_ALIGN), pin=on_cuda)
        stream = None
        if on_cuda:
            if self._stream is None:
                self._stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            self._stream.wait_stream(torch.cuda.current_stream())
            stream = self._stream
            for tensor in sources:  # the allocator must not hand their memory out before the copy ran
                if tensor.is_cuda:
                    tensor.record_stream(stream)
        return StagingJob(writes=writes, sources=sources, header=header, buffer=buffer, stream=stream,
                          checksum_chunk=checksum_chunk)  # fmt: skip

    @staticmethod
    def copy(job: StagingJob) -> Staged:
        """Copy the header and every piece into the buffer (any thread); returns the staged file.

        When this returns, the copies are complete: the caller may mutate its tensors."""
        start = len(job.header)
        size = start + job.writes.data_bytes
        array: Any = job.buffer.numpy()
        view = memoryview(array)
        view[:start] = job.header
        crcs: list[tuple[int, ...]] | None
        if job.stream is not None:
            with torch.cuda.stream(job.stream):
                StagingBuffer._copy_pieces(job, non_blocking=True)
            job.stream.synchronize()
            chunk = job.checksum_chunk
            crcs = None if chunk is None else checksum_pieces(view, start, job.writes, chunk)
        else:
            crcs = StagingBuffer._copy_pieces(job, non_blocking=False, view=view)
        return Staged(file=view[:size], data_start=start, crcs=None if crcs is None else tuple(crcs))

    @staticmethod
    def _copy_pieces(
        job: StagingJob, non_blocking: bool, view: memoryview | None = None
    ) -> list[tuple[int, ...]] | None:
        """Copy every piece; with `view` and `job.checksum_chunk`, checksum each chunk right after
        copying it (contiguous CPU sources), or the piece after copying it whole (anything else)."""
        chunk = job.checksum_chunk if view is not None else None
        crcs: list[tuple[int, ...]] = []
        base = len(job.header)
        with torch.no_grad():
            for placed, source in zip(job.writes.pieces, job.sources, strict=True):
                piece = placed.piece
                first = base + placed.data_offset
                dst = job.buffer[first : first + piece.nbytes]
                src = source.detach()
                dtype = ST_TO_TORCH[piece.dtype]
                ranges = checksum_chunks(piece.nbytes, chunk) if chunk is not None else []
                if chunk is not None and not src.is_cuda and src.is_contiguous() and src.dtype == dtype:
                    assert view is not None
                    flat = src.reshape(-1).view(torch.uint8)
                    sums = []
                    for lo, hi in ranges:
                        dst[lo:hi].copy_(flat[lo:hi])
                        sums.append(crc32(view[first + lo : first + hi]))
                    crcs.append(tuple(sums))
                    continue
                dst.view(dtype).view(piece.box.shape).copy_(src, non_blocking=non_blocking)
                if chunk is not None:
                    assert view is not None
                    crcs.append(tuple(crc32(view[first + lo : first + hi]) for lo, hi in ranges))
        return crcs if chunk is not None else None


def checksum_pieces(
    view: memoryview, data_start: int, writes: RankWrites, chunk: int
) -> list[tuple[int, ...]]:
    """The chunk CRC-32s of every staged piece of `writes` (a second pass over the staged bytes, for
    saves whose copy did not checksum: eager staging, CUDA)."""
    out = []
    for placed in writes.pieces:
        first = data_start + placed.data_offset
        ranges = checksum_chunks(placed.piece.nbytes, chunk)
        out.append(tuple(crc32(view[first + lo : first + hi]) for lo, hi in ranges))
    return out
