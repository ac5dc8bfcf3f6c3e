"""The reshardable sampler: shares, determinism, and no sample skipped or repeated across a rescale."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elastra.data import ReshardableSampler, accumulation_steps, epoch_permutation, rank_share


@pytest.mark.parametrize(
    ("global_batch", "world", "expected"),
    [
        pytest.param(12, 4, [(0, 3), (3, 3), (6, 3), (9, 3)], id="even-split"),
        pytest.param(12, 5, [(0, 3), (3, 3), (6, 2), (8, 2), (10, 2)], id="uneven-first-ranks-larger"),
        pytest.param(3, 3, [(0, 1), (1, 1), (2, 1)], id="one-each"),
        pytest.param(7, 1, [(0, 7)], id="single-rank-takes-all"),
    ],
)
def test_rank_shares_tile_the_global_batch(
    global_batch: int, world: int, expected: list[tuple[int, int]]
) -> None:
    shares = [rank_share(global_batch, r, world) for r in range(world)]
    assert shares == expected
    assert sum(count for _, count in shares) == global_batch


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param(dict(num_samples=10, global_batch_size=0, seed=0), "global_batch_size", id="zero-batch"),
        pytest.param(dict(num_samples=3, global_batch_size=4, seed=0), "smaller than", id="too-few-samples"),
        pytest.param(
            dict(num_samples=10, global_batch_size=2, seed=0, rank=0, world_size=3),
            "exceeds",
            id="world-larger-than-batch",
        ),
        pytest.param(
            dict(num_samples=10, global_batch_size=4, seed=0, rank=2, world_size=2),
            "outside",
            id="rank-outside-world",
        ),
    ],
)
def test_invalid_configs_are_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReshardableSampler(**kwargs)


def test_permutation_is_deterministic_and_differs_by_epoch() -> None:
    first = epoch_permutation(100, 7, 0)
    assert first == epoch_permutation(100, 7, 0)
    assert sorted(first) == list(range(100))
    assert first != epoch_permutation(100, 7, 1)
    assert first != epoch_permutation(100, 8, 0)


def _take_global(samplers: list[ReshardableSampler]) -> list[int]:
    """Every rank takes its slice of one global batch; returns the union in rank order."""
    batches = [s.next_batch() for s in samplers]
    assert len({(b.epoch, b.position) for b in batches}) == 1, "ranks disagree on the position"
    return [i for b in batches for i in b.indices]


def _world(state: dict[str, object] | None, world: int, **kw: int) -> list[ReshardableSampler]:
    samplers = [ReshardableSampler(rank=r, world_size=world, **kw) for r in range(world)]
    if state is not None:
        for s in samplers:
            s.load_state_dict(json.loads(json.dumps(state)))  # it travels as JSON
    return samplers


@settings(max_examples=60, deadline=None)
@given(
    num_samples=st.integers(20, 200),
    global_batch=st.integers(4, 12),
    worlds=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    steps_per_world=st.integers(1, 6),
    seed=st.integers(0, 2**31),
)
def test_rescales_never_skip_or_repeat_a_sample_of_an_epoch(
    num_samples: int, global_batch: int, worlds: list[int], steps_per_world: int, seed: int
) -> None:
    kw = dict(num_samples=num_samples, global_batch_size=global_batch, seed=seed)
    seen: Counter[tuple[int, int]] = Counter()
    state = None
    for world in worlds:
        samplers = _world(state, world, **kw)
        for _ in range(steps_per_world):
            epoch = samplers[0].peek().epoch
            for index in _take_global(samplers):
                seen[(epoch, index)] += 1
        state = samplers[0].state_dict()
    assert max(seen.values()) == 1, "a sample was seen twice in one epoch"
    # Same sequence as never rescaling at all: the global order is independent of the world size.
    reference = _world(None, 1, **kw)[0]
    expected: Counter[tuple[int, int]] = Counter()
    for _ in range(len(worlds) * steps_per_world):
        batch = reference.next_batch()
        expected.update((batch.epoch, i) for i in batch.indices)
    assert seen == expected


def test_a_full_epoch_covers_every_sample_once_then_rolls_over() -> None:
    samplers = _world(None, 3, num_samples=30, global_batch_size=6, seed=1)
    seen = [i for _ in range(5) for i in _take_global(samplers)]
    assert sorted(seen) == list(range(30))
    nxt = samplers[0].peek()
    assert (nxt.epoch, nxt.position) == (1, 0)


def test_incomplete_last_batch_is_dropped() -> None:
    sampler = ReshardableSampler(num_samples=10, global_batch_size=4, seed=0)
    batches = [sampler.next_batch() for _ in range(3)]
    assert [(b.epoch, b.position) for b in batches] == [(0, 0), (0, 4), (1, 0)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"seed": 99}, "seed", id="other-seed"),
        pytest.param({"global_batch_size": 8}, "global_batch_size", id="other-batch"),
        pytest.param({"num_samples": 11}, "num_samples", id="other-dataset"),
        pytest.param({"version": 0}, "version", id="other-version"),
        pytest.param({"position": -1}, "position", id="negative-position"),
        pytest.param({"epoch": "x"}, "epoch", id="non-integer-epoch"),
    ],
)
def test_foreign_state_is_refused(change: dict[str, object], message: str) -> None:
    sampler = ReshardableSampler(num_samples=40, global_batch_size=4, seed=3)
    state = {**sampler.state_dict(), **change}
    with pytest.raises(ValueError, match=message):
        sampler.load_state_dict(state)


@pytest.mark.parametrize(
    ("global_batch", "world", "micro", "expected_sizes"),
    [
        pytest.param(16, 2, 3, [3, 3, 2], id="share-8-in-micro-3"),
        pytest.param(16, 4, 4, [4], id="share-fits-one-micro"),
        pytest.param(15, 4, 2, [2, 2], id="uneven-share-rank0-4"),
    ],
)
def test_micro_batches_cover_the_share(
    global_batch: int, world: int, micro: int, expected_sizes: list[int]
) -> None:
    sampler = ReshardableSampler(num_samples=64, global_batch_size=global_batch, seed=0, world_size=world)
    batch = sampler.next_batch()
    micro_batches = batch.micro_batches(micro)
    assert [len(m) for m in micro_batches] == expected_sizes
    assert tuple(i for m in micro_batches for i in m) == batch.indices


@pytest.mark.parametrize("world", [pytest.param(w, id=f"world-{w}") for w in (1, 2, 3, 4)])
def test_loss_scale_makes_averaged_sum_equal_the_global_mean(world: int) -> None:
    """sum over ranks of (loss_scale * local sum) / world == global mean, whatever the world size."""
    values = [float(i) for i in range(12)]
    samplers = _world(None, world, num_samples=12, global_batch_size=12, seed=5)
    batches = [s.next_batch() for s in samplers]
    averaged = sum(b.loss_scale * sum(values[i] for i in b.indices) for b in batches) / world
    assert averaged == pytest.approx(sum(values) / 12)


@pytest.mark.parametrize(
    ("global_batch", "world", "micro", "steps"),
    [
        pytest.param(16, 4, 4, 1, id="share-fits"),
        pytest.param(16, 3, 4, 2, id="largest-share-6-needs-2"),
        pytest.param(16, 1, 3, 6, id="single-rank-16-in-3s"),
        pytest.param(4, 4, 8, 1, id="micro-larger-than-share"),
    ],
)
def test_accumulation_steps_agree_across_ranks(global_batch: int, world: int, micro: int, steps: int) -> None:
    assert accumulation_steps(global_batch, world, micro) == steps
    samplers = _world(None, world, num_samples=64, global_batch_size=global_batch, seed=2)
    for sampler in samplers:
        batch = sampler.next_batch()
        parts = batch.split(steps)
        assert len(parts) == steps
        assert all(len(p) <= micro for p in parts)
        assert tuple(i for p in parts for i in p) == batch.indices
