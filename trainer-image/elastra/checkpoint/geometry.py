"""Overlap geometry of N-d boxes: which part of a saved fragment lands where in a slice held now.

Pure: no I/O, no torch. A box is a global offset and a shape; a 0-d tensor is the empty box `((), ())`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Box:
    """A hyper-rectangle in a tensor's global index space."""

    offsets: tuple[int, ...]
    """Global index of the box's first element, per dimension."""
    shape: tuple[int, ...]
    """Extent per dimension."""

    def __post_init__(self) -> None:
        if len(self.offsets) != len(self.shape):
            raise ValueError(f"box rank mismatch: offsets {self.offsets} vs shape {self.shape}")
        if any(o < 0 for o in self.offsets) or any(s < 0 for s in self.shape):
            raise ValueError(f"box with negative offsets or shape: {self.offsets} {self.shape}")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def within(self, global_shape: tuple[int, ...]) -> bool:
        """Whether the box lies inside a tensor of `global_shape`."""
        return len(global_shape) == len(self.shape) and all(
            o + s <= g for o, s, g in zip(self.offsets, self.shape, global_shape, strict=True)
        )


def intersect(a: Box, b: Box) -> Box | None:
    """The common part of two boxes of the same rank, or None when it is empty."""
    if len(a.shape) != len(b.shape):
        raise ValueError(f"cannot intersect boxes of rank {len(a.shape)} and {len(b.shape)}")
    offsets = []
    shape = []
    for ao, asz, bo, bsz in zip(a.offsets, a.shape, b.offsets, b.shape, strict=True):
        lo = max(ao, bo)
        hi = min(ao + asz, bo + bsz)
        if hi <= lo:
            return None
        offsets.append(lo)
        shape.append(hi - lo)
    return Box(tuple(offsets), tuple(shape))


def relative(inner: Box, outer: Box) -> tuple[int, ...]:
    """Offsets of `inner` measured from `outer`'s first element."""
    return tuple(i - o for i, o in zip(inner.offsets, outer.offsets, strict=True))


def row_major_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides of a contiguous row-major array of `shape`."""
    strides = [1] * len(shape)
    for d in range(len(shape) - 2, -1, -1):
        strides[d] = strides[d + 1] * shape[d + 1]
    return tuple(strides)


def covering_element_range(
    outer_shape: tuple[int, ...], inner_rel: tuple[int, ...], inner_shape: tuple[int, ...]
) -> tuple[int, int]:
    """The smallest `[start, end)` of flat row-major element indices of `outer_shape` that holds the
    sub-box at `inner_rel` of `inner_shape`. Exact when the sub-box is contiguous (e.g. a dim-0 slice)."""
    if math.prod(inner_shape) == 0:
        return (0, 0)
    strides = row_major_strides(outer_shape)
    first = sum(r * s for r, s in zip(inner_rel, strides, strict=True))
    last = sum((r + n - 1) * s for r, n, s in zip(inner_rel, inner_shape, strides, strict=True))
    return (first, last + 1)


def chunk_bounds(dim_size: int, num_chunks: int, index: int) -> tuple[int, int]:
    """`torch.chunk` semantics (what `Shard(dim)` and FSDP2 use): ceil-sized chunks, the tail ones
    possibly short or empty. Returns the `[start, end)` of chunk `index`."""
    if num_chunks < 1 or not 0 <= index < num_chunks:
        raise ValueError(f"chunk {index} of {num_chunks}")
    size = -(-dim_size // num_chunks) if dim_size else 0
    start = min(size * index, dim_size)
    return (start, min(start + size, dim_size))
