"""Save and load planning: which bytes go where. Pure: no I/O, no torch, no process group.

Save: every rank describes the pieces it holds (`Piece`); `plan_save` deduplicates identical pieces
(replicated tensors, replicated mesh dims) so each is written once, by one of its holders, balancing
bytes across ranks, and lays out each rank's shard file. Load: `plan_reads` says which byte ranges of
which saved fragments fill the slice a rank holds now.
"""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True)
class SavePlan:
    """Every rank's writes; identical on all ranks because it is computed from the same inputs."""

    writes: tuple[RankWrites, ...]
    tensors: dict[str, tuple[str, tuple[int, ...], str, str]]
    """path → (dtype, shape, layout, sharding) of every logical tensor."""


_Key = tuple[str, tuple[int, ...], tuple[int, ...]]


def _distinct_pieces(
    pieces_by_rank: list[list[Piece]],
) -> tuple[dict[str, tuple[str, tuple[int, ...], str, str]], dict[_Key, list[int]], dict[_Key, Piece]]:
    """Tensor metadata by path, holders (ascending ranks) by piece key, and one piece per key; empty
    pieces are left out. Raises ValueError when ranks disagree about a tensor."""
    tensors: dict[str, tuple[str, tuple[int, ...], str, str]] = {}
    holders: dict[_Key, list[int]] = {}
    by_key: dict[_Key, Piece] = {}
    for rank, pieces in enumerate(pieces_by_rank):
        for piece in pieces:
            known = tensors.get(piece.path)
            if known is None:
                tensors[piece.path] = (piece.dtype, piece.shape, piece.layout, piece.sharding)
            elif known[0] != piece.dtype or known[1] != piece.shape or known[2] != piece.layout:
                raise ValueError(
                    f"ranks disagree about tensor {piece.path}: {known[:3]} vs "
                    f"{(piece.dtype, piece.shape, piece.layout)}"
                )
            box = piece.box
            key = (piece.path, box.offsets, box.shape)
            held = holders.get(key)
            if held is None:
                if 0 in box.shape:
                    continue
                holders[key] = [rank]
                by_key[key] = piece
            else:
                held.append(rank)
    return tensors, holders, by_key


def plan_save(pieces_by_rank: list[list[Piece]]) -> SavePlan:
    """Assign each distinct piece to exactly one holder and lay out the shard files.

    Pieces held by a single rank go to it; pieces held by several ranks (replicated) go, largest first,
    to whichever holder has the fewest bytes so far, so replicated tensors spread across ranks.

    Linear in the number of pieces (plus the sorts): every piece is looked at once, its size is computed
    once per distinct piece, and a replicated piece's holder is a `min` over its holders' loads
    (benchmarks/operator_scale.py times it at 1k-16k ranks against DCP's global plan)."""
    tensors, holders, by_key = _distinct_pieces(pieces_by_rank)
    nbytes = {key: piece.nbytes for key, piece in by_key.items()}
    load = [0] * len(pieces_by_rank)
    assigned: list[list[Piece]] = [[] for _ in pieces_by_rank]
    replicated = []
    for key, held in holders.items():  # a piece only one rank holds goes to it, in any order
        if len(held) == 1:
            load[held[0]] += nbytes[key]
            assigned[held[0]].append(by_key[key])
        else:
            replicated.append(key)
    for key in sorted(replicated, key=lambda k: (-nbytes[k], k)):
        rank = min(holders[key], key=load.__getitem__)  # holders ascend: a tie goes to the lowest rank
        load[rank] += nbytes[key]
        assigned[rank].append(by_key[key])
    writes = []
    for rank, pieces in enumerate(assigned):
        pieces.sort(key=lambda p: (-ITEMSIZE[p.dtype], p.key))
        placed = []
        offset = 0
        for i, piece in enumerate(pieces):
            placed.append(Placed(piece, f"{i}:{piece.path}", offset))
            offset += nbytes[piece.key]
        writes.append(RankWrites(rank, shard_file(rank), tuple(placed)))
    return SavePlan(tuple(writes), tensors)


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
