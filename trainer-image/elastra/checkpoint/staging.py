"""Staging: copy the pieces a rank writes into one reusable, preallocated host buffer.

The copy is the only part of a save that must happen before the training loop mutates its state. The
buffer is allocated (and touched, so its pages are resident) once and grown only when a save needs
more, so steady-state saves do no allocation and RSS stays flat. On CUDA the buffer is pinned and
copies run on a side stream that first waits for the training thread's current stream.

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

from elastra.checkpoint.plan import RankWrites
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


@dataclass(frozen=True, slots=True)
class StagingJob:
    """One prepared copy: what to copy where, and the CUDA stream (if any) it runs on."""

    writes: RankWrites
    sources: tuple[torch.Tensor, ...]
    """The live tensors, in `writes.pieces` order."""
    buffer: torch.Tensor
    """The (pinned, on CUDA) uint8 host buffer the pieces are copied into."""
    stream: torch.cuda.Stream | None
    """Side stream already ordered after the training thread's work; None on CPU."""


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
            self._buffer = torch.zeros(nbytes, dtype=torch.uint8, pin_memory=pin)
            self.allocations += 1
        return self._buffer

    def prepare(
        self, writes: RankWrites, leaves: dict[tuple[str, tuple[int, ...], tuple[int, ...]], TensorLeaf]
    ) -> StagingJob:
        """On the training thread: the buffer for `writes`, and on CUDA a side stream that will copy
        only after the work already queued on the current stream (the step that produced the state)."""
        sources = tuple(leaves[placed.piece.key].local for placed in writes.pieces)
        on_cuda = any(t.is_cuda for t in sources)
        buffer = self._ensure(writes.data_bytes, pin=on_cuda)
        stream = None
        if on_cuda:
            if self._stream is None:
                self._stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            self._stream.wait_stream(torch.cuda.current_stream())
            stream = self._stream
            for tensor in sources:  # the allocator must not hand their memory out before the copy ran
                if tensor.is_cuda:
                    tensor.record_stream(stream)
        return StagingJob(writes=writes, sources=sources, buffer=buffer, stream=stream)

    @staticmethod
    def copy(job: StagingJob) -> memoryview:
        """Copy every piece into the buffer at its data offset (any thread); returns the bytes staged.

        When this returns, the copies are complete: the caller may mutate its tensors."""
        if job.stream is not None:
            with torch.cuda.stream(job.stream):
                StagingBuffer._copy(job, non_blocking=True)
            job.stream.synchronize()
        else:
            StagingBuffer._copy(job, non_blocking=False)
        array: Any = job.buffer.numpy()
        return memoryview(array)[: job.writes.data_bytes]

    def stage(
        self, writes: RankWrites, leaves: dict[tuple[str, tuple[int, ...], tuple[int, ...]], TensorLeaf]
    ) -> memoryview:
        """`prepare` then `copy` on the calling thread (eager staging)."""
        return self.copy(self.prepare(writes, leaves))

    @staticmethod
    def _copy(job: StagingJob, non_blocking: bool) -> None:
        with torch.no_grad():
            for placed, source in zip(job.writes.pieces, job.sources, strict=True):
                piece = placed.piece
                dst = job.buffer[placed.data_offset : placed.data_offset + piece.nbytes]
                dst.view(ST_TO_TORCH[piece.dtype]).view(piece.box.shape).copy_(
                    source.detach(), non_blocking=non_blocking
                )
