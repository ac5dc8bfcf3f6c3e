"""Overlap math and save/load planning: property tests over random shapes and shardings, uneven ones
included, plus tables of the planner's rules."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from elastra.checkpoint.format import Fragment, TensorEntry
from elastra.checkpoint.geometry import Box, chunk_bounds, intersect
from elastra.checkpoint.plan import Piece, plan_reads, plan_save
from elastra.checkpoint.reader import place


def points(box: Box) -> set[tuple[int, ...]]:
    return set(itertools.product(*(range(o, o + s) for o, s in zip(box.offsets, box.shape, strict=True))))


def grid(shape: tuple[int, ...], splits: tuple[int, ...]) -> list[Box]:
    """The boxes of `torch.chunk`-style sharding of every dim into `splits[d]` parts (empty ones dropped)."""
    per_dim = [[chunk_bounds(n, k, i) for i in range(k)] for n, k in zip(shape, splits, strict=True)]
    boxes = []
    for combo in itertools.product(*per_dim):
        box = Box(tuple(a for a, _ in combo), tuple(b - a for a, b in combo))
        if box.numel:
            boxes.append(box)
    return boxes


shapes = st.lists(st.integers(1, 7), min_size=1, max_size=3).map(tuple)
boxes_in = st.integers(1, 3).flatmap(
    lambda rank: st.tuples(
        st.lists(st.integers(0, 6), min_size=rank, max_size=rank),
        st.lists(st.integers(0, 6), min_size=rank, max_size=rank),
    ).map(lambda t: Box(tuple(t[0]), tuple(t[1])))
)


@given(st.data())
def test_intersect_is_the_set_intersection(data: st.DataObject) -> None:
    a = data.draw(boxes_in)
    coords = st.tuples(*(st.integers(0, 6) for _ in a.shape))
    b = data.draw(st.tuples(coords, coords).map(lambda t: Box(t[0], t[1])))
    common = intersect(a, b)
    expected = points(a) & points(b)
    assert (points(common) if common else set()) == expected


@given(shapes.flatmap(lambda s: st.tuples(st.just(s), st.tuples(*(st.integers(1, 4) for _ in s)),
                                          st.tuples(*(st.integers(1, 5) for _ in s)))))  # fmt: skip
@settings(max_examples=150, deadline=None)
def test_restoring_any_sharding_from_any_other_is_exact(
    case: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]],
) -> None:
    shape, saved_splits, target_splits = case
    full = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)
    fragments = []
    offset = 0
    for box in grid(shape, saved_splits):
        nbytes = box.numel * 4
        fragments.append(Fragment("f", offset, nbytes, box, (0,)))
        offset += nbytes
    blob = b"".join(full[tuple(slice(o, o + s) for o, s in zip(f.box.offsets, f.box.shape, strict=True))]
                    .contiguous().numpy().tobytes() for f in fragments)  # fmt: skip
    entry = TensorEntry("F32", shape, "boxes", "", tuple(fragments))
    for target in grid(shape, target_splits):
        out = torch.full(target.shape, -1.0)
        in_space, reads = plan_reads(entry, target, "boxes", chunk=16)
        for read in reads:
            assert read.byte_start % 16 == 0 and read.byte_end <= read.fragment.length
            data = blob[read.fragment.offset + read.byte_start : read.fragment.offset + read.byte_end]
            place(out, in_space, read, data, "F32")
        want = full[tuple(slice(o, o + s) for o, s in zip(target.offsets, target.shape, strict=True))]
        assert torch.equal(out, want)


@given(st.integers(0, 40), st.integers(1, 6), st.integers(1, 6))
def test_flat_ranges_reshard_and_read_as_dim0_slices(total: int, saved: int, target: int) -> None:
    shape = (total, 1) if total else (0, 1)
    fragments = []
    for i in range(saved):
        a, b = chunk_bounds(total, saved, i)
        if b > a:
            fragments.append(Fragment("f", a * 8, (b - a) * 8, Box((a,), (b - a,)), (0,)))
    entry = TensorEntry("F64", shape, "flat", "", tuple(fragments))
    blob = torch.arange(total, dtype=torch.float64).numpy().tobytes()
    for i in range(target):
        a, b = chunk_bounds(total, target, i)
        box = Box((a, 0), (b - a, 1))  # an N-d dim-0 slice reads a Flat-saved tensor through its flat range
        out = torch.zeros(box.shape, dtype=torch.float64)
        in_space, reads = plan_reads(entry, box, "boxes", chunk=64)
        for read in reads:
            place(
                out,
                in_space,
                read,
                blob[read.fragment.offset + read.byte_start : read.fragment.offset + read.byte_end],
                "F64",
            )
        assert torch.equal(out.reshape(-1), torch.arange(a, b, dtype=torch.float64))


def piece(path: str, box: Box, dtype: str = "F32", shape: tuple[int, ...] = (8, 4)) -> Piece:
    return Piece(path, dtype, shape, "boxes", "", box)


FULL = Box((0, 0), (8, 4))


@pytest.mark.parametrize(
    ("pieces_by_rank", "expected_writers"),
    [
        pytest.param([[piece("a", FULL)], [piece("a", FULL)]], {"a": [0]}, id="replicated-written-once"),
        pytest.param(
            [[piece(p, FULL) for p in "abcd"] for _ in range(2)],
            {"a": [0], "b": [1], "c": [0], "d": [1]},
            id="replicated-balanced-across-ranks",
        ),
        pytest.param(
            [
                [piece("s", Box((0, 0), (4, 4))), piece("r", FULL)],
                [piece("s", Box((4, 0), (4, 4))), piece("r", FULL)],
            ],
            {"s": [0, 1], "r": [0]},
            id="sharded-pieces-stay-with-their-holder",
        ),
        pytest.param(
            [[piece("e", Box((8, 0), (0, 4)))], [piece("e", FULL)]],
            {"e": [1]},
            id="empty-shards-write-nothing",
        ),
        pytest.param(
            [[piece("a", FULL), piece("a", FULL)], [piece("b", FULL)]],
            {"a": [0], "b": [1]},
            id="a-piece-listed-twice-by-one-rank-is-written-once",
        ),
        pytest.param(
            [[piece("r", FULL), piece("big", FULL)], [piece("r", FULL)], [piece("r", FULL)]],
            {"r": [1], "big": [0]},
            id="a-replica-goes-to-the-least-loaded-holder-not-the-first",
        ),
    ],
)
def test_plan_save_writes_each_piece_once(
    pieces_by_rank: list[list[Piece]], expected_writers: dict[str, list[int]]
) -> None:
    plan = plan_save(pieces_by_rank)
    writers: dict[str, list[int]] = {}
    for writes in plan.writes:
        for placed in writes.pieces:
            writers.setdefault(placed.piece.path, []).append(writes.rank)
    assert {k: sorted(v) for k, v in writers.items()} == expected_writers


def test_plan_save_aligns_every_piece_to_its_element_size() -> None:
    pieces = [piece("h", Box((0,), (3,)), "F16", (3,)), piece("d", Box((0,), (1,)), "F64", (1,)),
              piece("b", Box((0,), (5,)), "U8", (5,)), piece("f", Box((0,), (3,)), "F32", (3,))]  # fmt: skip
    placed = plan_save([pieces]).writes[0].pieces
    assert [p.piece.path for p in placed] == ["d", "f", "h", "b"]
    assert all(p.data_offset % {"F64": 8, "F32": 4, "F16": 2, "U8": 1}[p.piece.dtype] == 0 for p in placed)


def test_plan_save_rejects_ranks_that_disagree_on_a_tensor() -> None:
    with pytest.raises(ValueError, match="disagree"):
        plan_save([[piece("a", FULL)], [piece("a", FULL, dtype="F16")]])


def test_plan_reads_reports_uncovered_slices() -> None:
    entry = TensorEntry("F32", (8, 4), "boxes", "", (Fragment("f", 0, 64, Box((0, 0), (4, 4)), (0,)),))
    with pytest.raises(ValueError, match="cover 16 of the 32"):
        plan_reads(entry, FULL, "boxes", chunk=64)
