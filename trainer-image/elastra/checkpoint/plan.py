"""Save and load planning: which bytes go where. Pure: no I/O, no torch, no process group.

Save: every rank describes the pieces it holds (`Piece`); `plan_save` deduplicates identical pieces
(replicated tensors, replicated mesh dims) so each is written once, by one of its holders, balancing
bytes across ranks, and lays out each rank's shard file. Load: `plan_reads` says which byte ranges of
which saved fragments fill the slice a rank holds now.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from elastra.checkpoint.format import ITEMSIZE, FormatError, Fragment, TensorEntry, shard_file
from elastra.checkpoint.geometry import Box, covering_element_range, intersect, relative


@dataclass(frozen=True, slots=True)
class Piece:
    """A box of one logical tensor that a rank holds in memory."""

    path: str
    """State path of the logical tensor."""
    dtype: str
    """Safetensors dtype name."""
    shape: tuple[int, ...]
    """Global shape of the logical tensor."""
    layout: str
    """`boxes` or `flat` (the box lives in the flattened 1-D space)."""
    sharding: str
    """Human-readable sharding at save time."""
    box: Box

    @property
    def nbytes(self) -> int:
        return self.box.numel * ITEMSIZE[self.dtype]

    @property
    def key(self) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
        return (self.path, self.box.offsets, self.box.shape)

    def to_json(self) -> list[object]:
        return [self.path, self.dtype, list(self.shape), self.layout, self.sharding,
                list(self.box.offsets), list(self.box.shape)]  # fmt: skip

    @staticmethod
    def from_json(raw: list[object]) -> Piece:
        path, dtype, shape, layout, sharding, offsets, box_shape = raw
        return Piece(str(path), str(dtype), tuple(shape), str(layout), str(sharding),  # type: ignore[arg-type]
                     Box(tuple(offsets), tuple(box_shape)))  # type: ignore[arg-type]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Placed:
    """A piece placed in a shard file."""

    piece: Piece
    name: str
    """Its tensor name inside the safetensors header."""
    data_offset: int
    """Byte offset inside the file's data section (8-byte aligned start, then `itemsize`-aligned)."""


@dataclass(frozen=True, slots=True)
class RankWrites:
    """What one rank writes in one save."""

    rank: int
    file: str
    pieces: tuple[Placed, ...]
    """In file order: larger element sizes first, so every piece is aligned to its element size."""

    @property
    def data_bytes(self) -> int:
        return sum(p.piece.nbytes for p in self.pieces)


_Key = tuple[str, tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True, slots=True)
class SavePlan:
    """Who writes each distinct piece; identical on all ranks because it is computed from the same
    inputs. A rank lays out only its own file (`writes_of`): the manifest is assembled from what each
    rank reports it wrote, so no rank needs another's layout."""

    tensors: dict[str, tuple[str, tuple[int, ...], str, str]]
    """path → (dtype, shape, layout, sharding) of every logical tensor."""
    writer: dict[_Key, int]
    """The rank that writes each distinct piece, by (path, offsets, shape)."""
    pieces_by_rank: tuple[tuple[Piece, ...], ...]
    """The planner's input: what every rank holds."""

    def writes_of(self, rank: int) -> RankWrites:
        """`rank`'s shard file: the pieces it writes, in file order (larger element sizes first, so
        every piece is aligned to its element size; then by key, so every rank agrees)."""
        writer = self.writer
        mine: dict[_Key, Piece] = {}
        for piece in self.pieces_by_rank[rank]:
            box = piece.box
            key = (piece.path, box.offsets, box.shape)
            if writer.get(key) == rank and 0 not in box.shape:
                mine[key] = piece
        placed = []
        offset = 0
        for i, key in enumerate(sorted(mine, key=lambda k: (-ITEMSIZE[mine[k].dtype], k))):
            piece = mine[key]
            placed.append(Placed(piece, f"{i}:{piece.path}", offset))
            offset += piece.nbytes
        return RankWrites(rank, shard_file(rank), tuple(placed))

    @property
    def writes(self) -> tuple[RankWrites, ...]:
        """Every rank's file (tools and tests; a saving rank needs only `writes_of(its rank)`)."""
        return tuple(self.writes_of(rank) for rank in range(len(self.pieces_by_rank)))


def plan_save(pieces_by_rank: Sequence[Sequence[Piece]]) -> SavePlan:
    """Assign each distinct piece to exactly one holder. Raises ValueError when ranks disagree about a
    tensor's dtype, shape or layout.

    A piece only one rank holds goes to it; pieces held by several ranks (replicated) go, largest
    first, to whichever holder has the fewest bytes so far, so replicated tensors spread across ranks
    (a tie goes to the lowest rank). Empty pieces are written by nobody.

    Every rank runs this on the same gathered input, so it is on every save's critical path when the
    layout changed: one pass over all pieces with one dict operation each, nothing sorted but the
    replicated pieces, and no per-piece objects (benchmarks/operator_scale.py times it at 1k-16k
    ranks against DCP's global plan)."""
    first: dict[str, Piece] = {}
    writer: dict[_Key, int] = {}
    others: dict[_Key, list[int]] = {}  # the holders after the first, of replicated pieces
    claim = writer.setdefault
    for rank, pieces in enumerate(pieces_by_rank):
        for piece in pieces:
            path = piece.path
            known = first.get(path)
            if known is None:
                first[path] = piece
            elif known.dtype != piece.dtype or known.shape != piece.shape or known.layout != piece.layout:
                raise ValueError(
                    f"ranks disagree about tensor {path}: {(known.dtype, known.shape, known.layout)} vs "
                    f"{(piece.dtype, piece.shape, piece.layout)}"
                )
            box = piece.box
            key = (path, box.offsets, box.shape)
            if claim(key, rank) != rank:
                others.setdefault(key, []).append(rank)
    if others:
        _balance(writer, others, first, len(pieces_by_rank))
    tensors = {path: (p.dtype, p.shape, p.layout, p.sharding) for path, p in first.items()}
    return SavePlan(tensors, writer, tuple(tuple(pieces) for pieces in pieces_by_rank))


def _balance(
    writer: dict[_Key, int], others: dict[_Key, list[int]], first: dict[str, Piece], world: int
) -> None:
    """Reassign each replicated piece (in `others`), largest first, to its least-loaded holder."""
    itemsize = {path: ITEMSIZE[piece.dtype] for path, piece in first.items()}
    load = [0] * world
    for key, rank in writer.items():
        if key not in others:
            load[rank] += math.prod(key[2]) * itemsize[key[0]]
    nbytes = {key: math.prod(key[2]) * itemsize[key[0]] for key in others}
    for key in sorted(others, key=lambda k: (-nbytes[k], k)):
        rank = min([writer[key], *others[key]], key=load.__getitem__)  # ascending: ties go low
        writer[key] = rank
        load[rank] += nbytes[key]


def checksum_chunks(length: int, chunk: int) -> list[tuple[int, int]]:
    """The `[start, end)` byte ranges a fragment of `length` bytes is checksummed in."""
    return [(s, min(s + chunk, length)) for s in range(0, max(length, 1), chunk)] if length else [(0, 0)]


@dataclass(frozen=True, slots=True)
class Read:
    """Fill part of a local slice from a byte range of one saved fragment."""

    fragment: Fragment
    overlap: Box
    """The overlap, in the tensor's global (or flattened) index space."""
    byte_start: int
    """Start of the bytes to read, relative to the fragment's first byte; chunk-aligned for checksums."""
    byte_end: int
    element_offset: int
    """Flat index (in the fragment) of the first element of the bytes read."""


def as_flat_box(box: Box, shape: tuple[int, ...]) -> Box | None:
    """The 1-D box of a row-major contiguous N-d box (e.g. a dim-0 slice), or None if not contiguous."""
    dims = [d for d, n in enumerate(box.shape) if n != 1]
    if box.numel and dims:
        first = dims[0]
        if any(box.shape[d] != shape[d] for d in range(first + 1, len(shape))):
            return None
    start, end = covering_element_range(shape, box.offsets, box.shape) if box.numel else (0, 0)
    if box.numel and end - start != box.numel:
        return None
    return Box((start,), (box.numel,))


def fragments_in_space(entry: TensorEntry, layout: str) -> tuple[Fragment, ...]:
    """The entry's fragments expressed in the target's layout; FormatError when they cannot be."""
    if entry.layout == layout:
        return entry.fragments
    if layout == "flat":
        out = []
        for f in entry.fragments:
            flat = as_flat_box(f.box, entry.shape)
            if flat is None:
                raise FormatError(f"saved fragment {f.box} is not contiguous; it cannot be read as Flat")
            out.append(Fragment(f.file, f.offset, f.length, flat, f.checksums))
        return tuple(out)
    raise FormatError("flat-saved tensors load into N-d targets only through the target's flat range")


def plan_reads(entry: TensorEntry, target: Box, layout: str, chunk: int) -> tuple[Box, list[Read]]:
    """Which byte ranges of which saved fragments fill `target` (a box in `layout`'s index space).

    Returns the target in the index space the reads use (flattened when the tensor was saved as
    `Flat` and the target is a contiguous N-d box) and the reads. Raises FormatError when the saved
    fragments do not cover the target."""
    itemsize = ITEMSIZE[entry.dtype]
    if layout == "boxes" and entry.layout == "flat":
        flat = as_flat_box(target, entry.shape)
        if flat is None:
            raise FormatError(f"tensor was saved as Flat; target slice {target} is not contiguous")
        target, layout = flat, "flat"
    reads = []
    covered = 0
    for fragment in fragments_in_space(entry, layout):
        overlap = intersect(fragment.box, target)
        if overlap is None:
            continue
        covered += overlap.numel
        first, end = covering_element_range(
            fragment.box.shape, relative(overlap, fragment.box), overlap.shape
        )
        byte_start = (first * itemsize) // chunk * chunk
        byte_end = min(-(-(end * itemsize) // chunk) * chunk, fragment.length)
        reads.append(Read(fragment, overlap, byte_start, byte_end, byte_start // itemsize))
    if covered < target.numel:
        raise FormatError(f"saved fragments cover {covered} of the {target.numel} elements of slice {target}")
    return target, reads
