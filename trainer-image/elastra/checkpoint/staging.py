"""Staging: copy the pieces a rank writes into one reusable, preallocated host buffer.

This is the only part of a save that blocks the training loop. The buffer is allocated (and touched,
so its pages are resident) once and grown only when a save needs more, so steady-state saves do no
allocation and RSS stays flat. On CUDA the buffer is pinned and copies run on a side stream.
"""

from __future__ import annotations

from typing import Any

import torch

from elastra.checkpoint.plan import RankWrites
from elastra.checkpoint.state import ST_TO_TORCH, TensorLeaf


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

    def stage(
        self, writes: RankWrites, leaves: dict[tuple[str, tuple[int, ...], tuple[int, ...]], TensorLeaf]
    ) -> memoryview:
        """Copy every piece of `writes` into the buffer at its data offset; returns the bytes staged.

        When this returns, the copies are complete: the caller may mutate its tensors."""
        sources = [leaves[placed.piece.key].local for placed in writes.pieces]
        on_cuda = any(t.is_cuda for t in sources)
        buffer = self._ensure(writes.data_bytes, pin=on_cuda)
        if on_cuda and self._stream is None:
            self._stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        if on_cuda and self._stream is not None:
            self._stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self._stream):
                self._copy(writes, sources, buffer, non_blocking=True)
            self._stream.synchronize()
        else:
            self._copy(writes, sources, buffer, non_blocking=False)
        array: Any = buffer.numpy()
        return memoryview(array)[: writes.data_bytes]

    @staticmethod
    def _copy(
        writes: RankWrites, sources: list[torch.Tensor], buffer: torch.Tensor, non_blocking: bool
    ) -> None:
        for placed, source in zip(writes.pieces, sources, strict=True):
            piece = placed.piece
            dst = buffer[placed.data_offset : placed.data_offset + piece.nbytes]
            dst.view(ST_TO_TORCH[piece.dtype]).view(piece.box.shape).copy_(
                source.detach(), non_blocking=non_blocking
            )
