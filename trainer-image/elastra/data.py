"""A reshardable, deterministic sampler: the data-loader position survives a change of world size.

The order of an epoch is a permutation of `range(num_samples)` seeded by `(seed, epoch)`. The only
position kept is the number of global samples consumed in the current epoch, so a checkpoint taken at
world size 4 restores at world size 3 without skipping or repeating a sample: every rank simply takes
its slice of the *next global batch* for the world size it runs at now.

The global batch is fixed, whatever the world size. Each rank's share (`global_batch // world_size`
samples, the first `global_batch % world_size` ranks one more) can be cut further into micro-batches
for gradient accumulation. Summing per-sample losses and scaling by `GlobalBatchSlice.loss_scale`
gives the same gradient as one process computing the mean over the whole global batch, once the
gradients are averaged over ranks (what DDP and FSDP do).

Everything here is pure: no I/O, no torch. The state is JSON (`state_dict` / `load_state_dict`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

STATE_VERSION = 1
"""Version of the JSON state; bumped on an incompatible change."""


@dataclass(frozen=True, slots=True)
class GlobalBatchSlice:
    """One rank's part of one global batch."""

    epoch: int
    """Epoch the batch belongs to."""
    position: int
    """Global samples of the epoch consumed before this batch."""
    indices: tuple[int, ...]
    """Sample indices this rank processes, in order."""
    global_batch_size: int
    """Samples in the whole global batch, across ranks."""
    world_size: int
    """Ranks sharing the batch."""

    @property
    def loss_scale(self) -> float:
        """Multiply a *sum* of per-sample losses by this before backward.

        Gradients averaged over `world_size` ranks then equal the gradient of the mean loss over the
        global batch, independent of the world size.
        """
        return self.world_size / self.global_batch_size

    def micro_batches(self, micro_batch_size: int) -> list[tuple[int, ...]]:
        """This rank's indices cut into micro-batches of at most `micro_batch_size` (accumulation)."""
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        return [self.indices[i : i + micro_batch_size] for i in range(0, len(self.indices), micro_batch_size)]

    def split(self, parts: int) -> list[tuple[int, ...]]:
        """This rank's indices in exactly `parts` near-equal micro-batches (some may be empty).

        With FSDP every rank must run the same number of forward/backward passes; use
        `accumulation_steps()` for `parts` so that all ranks agree.
        """
        if parts < 1:
            raise ValueError(f"parts must be >= 1, got {parts}")
        base, extra = divmod(len(self.indices), parts)
        out, start = [], 0
        for part in range(parts):
            size = base + (1 if part < extra else 0)
            out.append(self.indices[start : start + size])
            start += size
        return out


def accumulation_steps(global_batch_size: int, world_size: int, micro_batch_size: int) -> int:
    """Micro-batches per step, the same on every rank: the largest share cut into `micro_batch_size`. Pure."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    largest = -(-global_batch_size // world_size)
    return -(-largest // micro_batch_size)


def rank_share(global_batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """`(offset, count)` of `rank`'s contiguous share of a global batch. Pure.

    Shares differ by at most one sample; the first `global_batch_size % world_size` ranks take the
    larger ones.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    base, extra = divmod(global_batch_size, world_size)
    offset = rank * base + min(rank, extra)
    return offset, base + (1 if rank < extra else 0)


@functools.lru_cache(maxsize=4)
def epoch_permutation(num_samples: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The order of one epoch: a permutation of `range(num_samples)` seeded by `(seed, epoch)`. Pure."""
    generator = np.random.Generator(np.random.PCG64([seed, epoch]))
    return tuple(int(i) for i in generator.permutation(num_samples))


class ReshardableSampler:
    """Hands each rank its slice of successive global batches; reshards on a new world size.

    The last, incomplete global batch of an epoch is dropped (every global batch is full, so the
    optimisation does not depend on where an epoch ends).
    """

    def __init__(
        self,
        *,
        num_samples: int,
        global_batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
        if num_samples < global_batch_size:
            raise ValueError(
                f"num_samples ({num_samples}) is smaller than one global batch ({global_batch_size})"
            )
        if world_size > global_batch_size:
            raise ValueError(
                f"world size {world_size} exceeds the global batch ({global_batch_size}): "
                "some ranks would have no samples"
            )
        rank_share(global_batch_size, rank, world_size)  # validates the rank
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.position = 0

    @property
    def batches_per_epoch(self) -> int:
        """Full global batches in one epoch."""
        return self.num_samples // self.global_batch_size

    def reshard(self, *, rank: int, world_size: int) -> None:
        """Run at a new world size from the same global position."""
        if world_size > self.global_batch_size:
            raise ValueError(f"world size {world_size} exceeds the global batch ({self.global_batch_size})")
        rank_share(self.global_batch_size, rank, world_size)
        self.rank, self.world_size = rank, world_size

    def peek(self) -> GlobalBatchSlice:
        """This rank's slice of the next global batch, without consuming it."""
        epoch, position = self.epoch, self.position
        if position + self.global_batch_size > self.num_samples:
            epoch, position = epoch + 1, 0
        order = epoch_permutation(self.num_samples, self.seed, epoch)
        offset, count = rank_share(self.global_batch_size, self.rank, self.world_size)
        start = position + offset
        return GlobalBatchSlice(
            epoch=epoch,
            position=position,
            indices=order[start : start + count],
            global_batch_size=self.global_batch_size,
            world_size=self.world_size,
        )

    def next_batch(self) -> GlobalBatchSlice:
        """This rank's slice of the next global batch; every rank advances by the whole batch."""
        batch = self.peek()
        self.epoch = batch.epoch
        self.position = batch.position + self.global_batch_size
        return batch

    def state_dict(self) -> dict[str, Any]:
        """JSON state. It does not hold the rank or world size: those come from the new generation."""
        return {
            "version": STATE_VERSION,
            "num_samples": self.num_samples,
            "global_batch_size": self.global_batch_size,
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state`, checking it describes the same data set and global batch."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"sampler state version {state.get('version')!r}, expected {STATE_VERSION}")
        for key in ("num_samples", "global_batch_size", "seed"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"sampler state has {key}={state.get(key)!r} but this sampler has "
                    f"{getattr(self, key)!r}: it was saved for a different data set or batch"
                )
        epoch, position = state.get("epoch"), state.get("position")
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"sampler state has an invalid epoch {epoch!r}")
        if not isinstance(position, int) or not 0 <= position <= self.num_samples:
            raise ValueError(f"sampler state has an invalid position {position!r}")
        self.epoch, self.position = epoch, position
