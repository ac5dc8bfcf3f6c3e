"""DTensor placements as boxes (`local_parts`), `_StridedShard` included: tables of known layouts, and
properties checked against torch's own splitting (`Shard._split_tensor`, `_StridedShard._split_tensor`
applied left to right, which is how DTensor defines a local tensor), plus save → reshard → load of
strided layouts through the planner."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.placement_types import _StridedShard

from elastra.checkpoint.format import Fragment, TensorEntry
from elastra.checkpoint.geometry import Box, LocalPart, ShardSpec, local_parts, merge, shard_runs, take
from elastra.checkpoint.plan import Piece, plan_reads, plan_save
from elastra.checkpoint.reader import place
from elastra.checkpoint.state import shard_specs

Spec = ShardSpec | None


def rows(parts: tuple[LocalPart, ...], dim: int = 0) -> list[int]:
    """The global indices along `dim` that the parts hold, in local order (parts of a 1-d tensor)."""
    return [i for p in parts for i in range(p.box.offsets[dim], p.box.offsets[dim] + p.box.shape[dim])]


@pytest.mark.parametrize(
    ("runs", "start", "end", "expected"),
    [
        pytest.param(((0, 5),), 1, 3, ((1, 2),), id="inside-one-run"),
        pytest.param(((0, 2), (10, 3)), 1, 4, ((1, 1), (10, 2)), id="across-two-runs"),
        pytest.param(((0, 2), (10, 3)), 2, 5, ((10, 3),), id="exactly-the-second-run"),
        pytest.param(((0, 2), (10, 3)), 5, 5, (), id="empty-range"),
    ],
)
def test_take_slices_local_positions(
    runs: tuple[tuple[int, int], ...], start: int, end: int, expected: tuple[tuple[int, int], ...]
) -> None:
    assert take(runs, start, end) == expected


@pytest.mark.parametrize(
    ("runs", "expected"),
    [
        pytest.param(((0, 2), (2, 3)), ((0, 5),), id="continuing-runs-join"),
        pytest.param(((4, 2), (0, 4)), ((4, 2), (0, 4)), id="out-of-order-runs-stay"),
        pytest.param(((0, 0), (3, 1), (5, 0)), ((3, 1),), id="empty-runs-drop"),
    ],
)
def test_merge(runs: tuple[tuple[int, int], ...], expected: tuple[tuple[int, int], ...]) -> None:
    assert merge(runs) == expected


@pytest.mark.parametrize(
    ("size", "spec", "chunks", "expected"),
    [
        # torch's own docstring example: 9 elements, _StridedShard(0, split_factor=2), 4 chunks
        pytest.param(
            9, ShardSpec(0, 2), 4, [[0, 1, 5], [2, 3, 6], [4, 7], [8]], id="torch-docstring-9-sf2-4"
        ),
        pytest.param(8, ShardSpec(0, 2), 2, [[0, 1, 4, 5], [2, 3, 6, 7]], id="even-sf2"),
        pytest.param(7, ShardSpec(0), 3, [[0, 1, 2], [3, 4, 5], [6]], id="plain-shard-uneven"),
        pytest.param(2, ShardSpec(0), 4, [[0], [1], [], []], id="plain-shard-empty-tail"),
        pytest.param(3, ShardSpec(0, 3), 2, [[0, 1, 2], []], id="sf-as-large-as-the-dim"),
    ],
)
def test_strided_chunks_of_one_dim(
    size: int, spec: ShardSpec, chunks: int, expected: list[list[int]]
) -> None:
    got = [rows(local_parts((size,), (chunks,), (c,), (spec,))) for c in range(chunks)]
    assert got == expected


def test_fsdp_tp_on_the_same_dim_is_one_box_per_rank_when_even() -> None:
    """torch's _StridedShard docstring: [8, 8] on mesh (dp=2, tp=2) as [_S(0, 2), S(0)] puts rows
    0-1, 4-5, 2-3, 6-7 on ranks (0,0), (0,1), (1,0), (1,1): one contiguous box each."""
    specs: tuple[Spec, ...] = (ShardSpec(0, 2), ShardSpec(0))
    got = {c: local_parts((8, 8), (2, 2), c, specs) for c in itertools.product(range(2), range(2))}
    assert {c: [p.box for p in parts] for c, parts in got.items()} == {
        (0, 0): [Box((0, 0), (2, 8))],
        (0, 1): [Box((4, 0), (2, 8))],
        (1, 0): [Box((2, 0), (2, 8))],
        (1, 1): [Box((6, 0), (2, 8))],
    }


def test_strided_dp_with_replicated_tp_holds_several_boxes() -> None:
    parts = local_parts((11, 3), (2, 2), (0, 1), (ShardSpec(0, 3), None))
    assert [(p.box, p.local_offsets) for p in parts] == [
        (Box((0, 0), (2, 3)), (0, 0)),
        (Box((4, 0), (2, 3)), (2, 0)),
        (Box((8, 0), (2, 3)), (4, 0)),
    ]


def test_a_rank_holding_nothing_gets_one_empty_part() -> None:
    assert local_parts((2, 5), (4,), (3,), (ShardSpec(0),)) == (LocalPart(Box((0, 0), (0, 5)), (0, 0)),)


def test_a_scalar_is_one_empty_box() -> None:
    assert local_parts((), (2,), (1,), (None,)) == (LocalPart(Box((), ()), ()),)


@pytest.mark.parametrize(
    ("mesh", "coordinate", "specs", "message"),
    [
        pytest.param((2,), (0, 0), (None,), "disagree", id="coordinate-rank-mismatch"),
        pytest.param((2,), (0,), (ShardSpec(2),), "dim 2", id="dim-out-of-range"),
    ],
)
def test_local_parts_rejects_inconsistent_input(
    mesh: tuple[int, ...], coordinate: tuple[int, ...], specs: tuple[Spec, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        local_parts((4, 4), mesh, coordinate, specs)


def test_shard_spec_rejects_a_zero_split_factor() -> None:
    with pytest.raises(ValueError, match="split factor"):
        ShardSpec(0, 0)


def test_shard_runs_of_a_plain_shard_equals_chunking() -> None:
    assert shard_runs(((3, 4), (20, 4)), ShardSpec(0), 2, 1) == ((20, 4),)


@pytest.mark.parametrize(
    ("placements", "ndim", "expected"),
    [
        pytest.param([Shard(1), Replicate()], 2, (ShardSpec(1), None), id="shard-and-replicate"),
        pytest.param(
            [_StridedShard(0, split_factor=2), Shard(0)],
            2,
            (ShardSpec(0, 2), ShardSpec(0)),
            id="fsdp-tp-strided",
        ),
        pytest.param([Shard(-1)], 3, (ShardSpec(2),), id="negative-dim-normalised"),
    ],
)
def test_torch_placements_become_shard_specs(
    placements: list[object], ndim: int, expected: tuple[Spec, ...]
) -> None:
    assert shard_specs("w", placements, ndim) == expected


def test_partial_placements_are_rejected_with_the_path() -> None:
    from torch.distributed.tensor import Partial

    with pytest.raises(TypeError, match=r"^w: placement .*Partial"):
        shard_specs("w", [Partial()], 2)


# ---------------------------------------------------------------- properties against torch


def torch_placement(spec: Spec) -> object:
    if spec is None:
        return Replicate()
    if spec.split_factor == 1:
        return Shard(spec.dim)
    return _StridedShard(spec.dim, split_factor=spec.split_factor)


def torch_local(
    full: torch.Tensor, mesh: tuple[int, ...], coord: tuple[int, ...], specs: tuple[Spec, ...]
) -> torch.Tensor:
    """DTensor's definition of a local tensor: each placement splits what is held so far, left to right."""
    local = full
    for mesh_dim, spec in enumerate(specs):
        if spec is not None:
            shards, _ = torch_placement(spec)._split_tensor(local, mesh[mesh_dim], with_padding=False)  # type: ignore[attr-defined]
            local = shards[coord[mesh_dim]]
    return local


def assemble(full: torch.Tensor, parts: tuple[LocalPart, ...]) -> torch.Tensor:
    shape = tuple(max(p.local_offsets[d] + p.box.shape[d] for p in parts) for d in range(full.dim()))
    out = torch.full(shape, -1, dtype=full.dtype)
    for p in parts:
        dst = tuple(slice(o, o + n) for o, n in zip(p.local_offsets, p.box.shape, strict=True))
        src = tuple(slice(o, o + n) for o, n in zip(p.box.offsets, p.box.shape, strict=True))
        out[dst] = full[src]
    return out


@st.composite
def layouts(
    draw: st.DrawFn, shape: tuple[int, ...] | None = None
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[Spec, ...]]:
    """A global shape, a 1-D or 2-D mesh, and a placement per mesh dim (Replicate, Shard, _StridedShard)."""
    if shape is None:
        shape = tuple(draw(st.lists(st.integers(0, 9), min_size=1, max_size=3)))
    mesh = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=2)))
    spec = st.one_of(
        st.none(),
        st.builds(ShardSpec, st.integers(0, len(shape) - 1), st.sampled_from([1, 1, 2, 3, 4])),
    )
    specs = tuple(draw(spec) for _ in mesh)
    return shape, mesh, specs


def coordinates(mesh: tuple[int, ...]) -> list[tuple[int, ...]]:
    return list(itertools.product(*(range(n) for n in mesh)))


@given(layouts())
@settings(max_examples=300, deadline=None)
def test_parts_reassemble_exactly_the_local_tensor_torch_defines(
    layout: tuple[tuple[int, ...], tuple[int, ...], tuple[Spec, ...]],
) -> None:
    shape, mesh, specs = layout
    full = torch.arange(math.prod(shape), dtype=torch.int64).reshape(shape)
    for coord in coordinates(mesh):
        parts = local_parts(shape, mesh, coord, specs)
        want = torch_local(full, mesh, coord, specs)
        got = assemble(full, parts)
        assert got.shape == want.shape and torch.equal(got, want), (coord, parts)
        assert all(p.box.within(shape) for p in parts)


@given(layouts())
@settings(max_examples=200, deadline=None)
def test_every_element_is_held_once_per_replica(
    layout: tuple[tuple[int, ...], tuple[int, ...], tuple[Spec, ...]],
) -> None:
    shape, mesh, specs = layout
    replicas = math.prod(n for n, s in zip(mesh, specs, strict=True) if s is None)
    counts: dict[tuple[int, ...], int] = {}
    for coord in coordinates(mesh):
        for p in local_parts(shape, mesh, coord, specs):
            for point in itertools.product(
                *(range(o, o + n) for o, n in zip(p.box.offsets, p.box.shape, strict=True))
            ):
                counts[point] = counts.get(point, 0) + 1
    assert len(counts) == math.prod(shape)
    assert set(counts.values()) <= {replicas}


@given(st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple).flatmap(
    lambda s: st.tuples(layouts(s), layouts(s))))  # fmt: skip
@settings(max_examples=150, deadline=None)
def test_a_strided_save_restores_into_any_other_layout(
    case: tuple[tuple[tuple[int, ...], tuple[int, ...], tuple[Spec, ...]], ...],
) -> None:
    """Save as the planner would (replicas deduplicated, several boxes per rank), restore each target part."""
    (shape, saved_mesh, saved_specs), (_, target_mesh, target_specs) = case
    full = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape) * 0.5 + 1
    pieces = [
        [Piece("w", "F32", shape, "boxes", "", p.box) for p in local_parts(shape, saved_mesh, c, saved_specs)]
        for c in coordinates(saved_mesh)
    ]
    fragments = []
    blob = b""
    for writes in plan_save(pieces).writes:
        for placed in writes.pieces:
            box = placed.piece.box
            data = full[tuple(slice(o, o + n) for o, n in zip(box.offsets, box.shape, strict=True))]
            raw = data.contiguous().numpy().tobytes()
            fragments.append(Fragment("f", len(blob), len(raw), box, (0,)))
            blob += raw
    assert sum(f.box.numel for f in fragments) == full.numel()  # each element written exactly once
    entry = TensorEntry("F32", shape, "boxes", "", tuple(fragments))
    for coord in coordinates(target_mesh):
        parts = local_parts(shape, target_mesh, coord, target_specs)
        local = torch.full(assemble(full, parts).shape, -1.0)
        for part in parts:
            view = local[
                tuple(slice(o, o + n) for o, n in zip(part.local_offsets, part.box.shape, strict=True))
            ]
            in_space, reads = plan_reads(entry, part.box, "boxes", chunk=16)
            for read in reads:
                data = blob[read.fragment.offset + read.byte_start : read.fragment.offset + read.byte_end]
                place(view, in_space, read, data, "F32")
        assert torch.equal(local, torch_local(full, target_mesh, coord, target_specs))
