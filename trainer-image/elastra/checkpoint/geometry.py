"""Overlap geometry of N-d boxes: which part of a saved fragment lands where in a slice held now.

Pure: no I/O, no torch. A box is a global offset and a shape; a 0-d tensor is the empty box `((), ())`.
"""

from __future__ import annotations

import itertools
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


# ---------------------------------------------------------------- DTensor placements as boxes
#
# A DTensor's local tensor is what its placements cut out of the global tensor, mesh dim by mesh dim,
# left to right. `Shard(dim)` keeps chunk `c` (torch.chunk) of the indices held so far along `dim`.
# `_StridedShard(dim, split_factor=sf)` (FSDP2 sharding a dim that tensor parallelism already shards)
# first chunks those indices into `sf` groups, then keeps chunk `c` of every group, concatenated. So
# along each dim the local tensor holds a list of global index runs; the local tensor is the product of
# its dims' runs: one box per combination, and a plain `Shard` leaves exactly one.


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """One mesh dim's placement, torch-free: `dim` is sharded across the mesh dim. `split_factor` 1 is
    `Shard(dim)`; more is `_StridedShard(dim, split_factor)`. Replicate is `None` in a placement list."""

    dim: int
    """Tensor dim sharded across this mesh dim."""
    split_factor: int = 1
    """How many interleaved groups the indices held so far are cut into before chunking."""

    def __post_init__(self) -> None:
        if self.dim < 0 or self.split_factor < 1:
            raise ValueError(f"invalid shard spec: dim {self.dim}, split factor {self.split_factor}")


Run = tuple[int, int]
"""A run of consecutive global indices along one dim: `(start, length)`."""


def take(runs: tuple[Run, ...], start: int, end: int) -> tuple[Run, ...]:
    """Local positions `[start, end)` of the index list that `runs` spell out, as runs."""
    out: list[Run] = []
    position = 0
    for first, length in runs:
        lo, hi = max(start, position), min(end, position + length)
        if lo < hi:
            out.append((first + lo - position, hi - lo))
        position += length
    return tuple(out)


def merge(runs: tuple[Run, ...]) -> tuple[Run, ...]:
    """Runs with neighbours that continue each other (globally and locally) joined, empty ones dropped."""
    out: list[Run] = []
    for first, length in runs:
        if length == 0:
            continue
        if out and out[-1][0] + out[-1][1] == first:
            out[-1] = (out[-1][0], out[-1][1] + length)
        else:
            out.append((first, length))
    return tuple(out)


def shard_runs(runs: tuple[Run, ...], spec: ShardSpec, num_chunks: int, index: int) -> tuple[Run, ...]:
    """The runs kept by chunk `index` of `num_chunks` under `spec`, from the runs held before."""
    total = sum(length for _, length in runs)
    groups = [take(runs, *chunk_bounds(total, spec.split_factor, g)) for g in range(spec.split_factor)]
    kept: list[Run] = []
    for group in groups:
        size = sum(length for _, length in group)
        kept.extend(take(group, *chunk_bounds(size, num_chunks, index)))
    return merge(tuple(kept))


@dataclass(frozen=True, slots=True)
class LocalPart:
    """A box of the global tensor and where it sits in the local tensor (same shape)."""

    box: Box
    """Global offsets and shape."""
    local_offsets: tuple[int, ...]
    """Offsets of the same elements inside the local tensor."""


def local_parts(
    global_shape: tuple[int, ...],
    mesh_shape: tuple[int, ...],
    coordinate: tuple[int, ...],
    placements: tuple[ShardSpec | None, ...],
) -> tuple[LocalPart, ...]:
    """The boxes of the global tensor held at mesh `coordinate`, in local-tensor order. Pure.

    A rank that holds nothing gets one empty part (so every rank still describes the tensor)."""
    if not len(mesh_shape) == len(coordinate) == len(placements):
        raise ValueError(f"mesh {mesh_shape}, coordinate {coordinate}, placements {placements} disagree")
    runs: list[tuple[Run, ...]] = [merge(((0, n),)) for n in global_shape]
    for mesh_dim, spec in enumerate(placements):
        if spec is None:
            continue
        if spec.dim >= len(global_shape):
            raise ValueError(f"placement shards dim {spec.dim} of a {len(global_shape)}-d tensor")
        runs[spec.dim] = shard_runs(runs[spec.dim], spec, mesh_shape[mesh_dim], coordinate[mesh_dim])
    if any(not r for r in runs):
        sizes = tuple(sum(length for _, length in r) for r in runs)
        return (LocalPart(Box((0,) * len(sizes), sizes), (0,) * len(sizes)),)
    per_dim = []  # per dim: (global start, length, local start) of each run
    for dim_runs in runs:
        placed, position = [], 0
        for first, length in dim_runs:
            placed.append((first, length, position))
            position += length
        per_dim.append(placed)
    parts = []
    for combo in itertools.product(*per_dim):
        box = Box(tuple(first for first, _, _ in combo), tuple(length for _, length, _ in combo))
        parts.append(LocalPart(box, tuple(local for _, _, local in combo)))
    return tuple(parts)


def tiling_problem(space: tuple[int, ...], boxes: list[Box]) -> str | None:
    """Why `boxes` do not tile `space` exactly (every element covered once), or None when they do.

    A proof by geometry, not by counting: every box lies inside `space`, no two boxes share an element
    (checked pairwise, with a sweep along dimension 0 so that the usual dim-0 shards compare each box
    with its neighbours only), and their volumes add up to the volume of `space`; disjoint boxes inside
    `space` whose volumes sum to its volume cover every element. Empty boxes are refused."""
    total = math.prod(space)
    for box in boxes:
        if not box.within(space):
            return f"box {box.offsets}+{box.shape} lies outside {space}"
        if box.numel == 0:
            return f"box {box.offsets}+{box.shape} is empty"
    if not space:  # a 0-d tensor: one element, one empty-shaped box
        return None if len(boxes) == 1 else f"{len(boxes)} boxes for a 0-d tensor"
    d = max(range(len(space)), key=lambda i: len({b.offsets[i] for b in boxes}))
    ordered = sorted(boxes, key=lambda b: (b.offsets[d], b.shape[d]))
    active: list[Box] = []
    for box in ordered:
        active = [a for a in active if a.offsets[d] + a.shape[d] > box.offsets[d]]
        for other in active:
            if intersect(other, box) is not None:
                return f"boxes {other.offsets}+{other.shape} and {box.offsets}+{box.shape} overlap"
        active.append(box)
    covered = sum(b.numel for b in boxes)
    if covered != total:
        return f"boxes cover {covered} of {total} elements"
    return None
