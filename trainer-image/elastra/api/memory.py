"""The in-memory snapshot tier's contract: its spec and its erasure-coding layout. Pure, no torch.

Both sides use the same layout function: the workers to place parity when they snapshot and to find
the bytes of a lost pod when they restore, the operator to decide whether a set of lost pods is still
recoverable from memory (else it says so with an Event and the job restores from disk).

Layout. Pods are taken in rank order and cut into groups of `k' = min(groupSize, pods - parity)`
consecutive pods (the last group may be smaller). Each group's data blocks (one per pod: the
concatenation of that pod's ranks' shard files, zero-padded to the group's longest block) are encoded
into `parity` Reed-Solomon parity blocks, and parity block `j` of a group is held by the `j`-th pod
after the group in ring order: never a member of the group, and `parity` distinct pods. So a group
loses data only when more than `parity` of its `k' + parity` holders are gone. Parity cannot live on
the group's own members: with each of `k` pods holding its own data plus `parity / k` of the parity,
`k - parity` survivors hold `(k² - parity²)/k < k` blocks, too few to rebuild `k` (information theory,
not a choice). The memory cost per pod is its own data plus the parity blocks it holds: `(k' + parity)
/ k'` of the state on average.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from elastra.api.base import SpecModel

MAX_PARITY = 4
"""Most parity blocks per group (`spec.checkpoint.memory.parity`)."""
MAX_GROUP_SIZE = 32
"""Most pods per erasure-coding group (`spec.checkpoint.memory.groupSize`)."""


class MemoryTier(SpecModel):
    """`spec.checkpoint.memory`: in-memory snapshots with erasure coding across nodes (REFT)."""

    every_steps: Annotated[int, Field(ge=1)] = 1
    """Take a memory snapshot every this many steps (in addition to the disk and S3 tiers)."""
    parity: Annotated[int, Field(ge=0, le=MAX_PARITY)] = 1
    """Parity blocks per group: a group survives the loss of any `parity` of its nodes."""
    group_size: Annotated[int, Field(ge=1, le=MAX_GROUP_SIZE)] = 4
    """Pods per erasure-coding group (`k`); fewer when the job has fewer than `k + parity` pods."""
    max_bytes_per_pod: Annotated[int, Field(ge=1 << 20)] | None = None
    """Cap on the snapshot memory of one pod (its memory volume's `sizeLimit`, and the snapshotter
    skips a snapshot that would exceed it). Default: no cap beyond the pod's memory limit."""


@dataclass(frozen=True, slots=True)
class Group:
    """One erasure-coding group."""

    index: int
    members: tuple[str, ...]
    """Pods whose data blocks the group encodes, in rank order (share numbers 0..k'-1)."""
    holders: tuple[str, ...]
    """Pods holding parity block 0..parity-1 (share numbers k'..k'+parity-1)."""

    @property
    def k(self) -> int:
        return len(self.members)

    def share_of(self, pod: str) -> int | None:
        """The share number `pod` holds for this group, or None."""
        if pod in self.members:
            return self.members.index(pod)
        if pod in self.holders:
            return self.k + self.holders.index(pod)
        return None


def plan_groups(pods: Sequence[str], group_size: int, parity: int) -> tuple[Group, ...]:
    """The groups of `pods` (in rank order). With fewer than `parity + 1` pods no parity fits: every
    pod is its own group with no holder (memory then guards against software failures only)."""
    if group_size < 1 or parity < 0:
        raise ValueError(f"group_size must be >= 1 and parity >= 0, got {group_size}, {parity}")
    if len(set(pods)) != len(pods):
        raise ValueError(f"pods must be distinct, got {list(pods)}")
    n = len(pods)
    if n == 0:
        return ()
    usable_parity = parity if n >= parity + 1 else 0
    k = max(1, min(group_size, n - usable_parity))
    groups = []
    for index, start in enumerate(range(0, n, k)):
        members = tuple(pods[start : start + k])
        end = start + len(members)
        holders = tuple(pods[(end + j) % n] for j in range(usable_parity))
        groups.append(Group(index, members, holders))
    return tuple(groups)


def lost_groups(groups: Sequence[Group], alive: Collection[str]) -> list[Group]:
    """The groups that cannot be rebuilt with only `alive` pods: fewer than `k` of their shares left."""
    lost = []
    for group in groups:
        shares = sum(1 for pod in (*group.members, *group.holders) if pod in alive)
        if shares < group.k:
            lost.append(group)
    return lost


def memory_ratio(groups: Sequence[Group]) -> float:
    """Average memory per pod relative to its state, for equal-sized blocks: `(k' + parity) / k'`."""
    blocks = sum(g.k + len(g.holders) for g in groups)
    data = sum(g.k for g in groups)
    return blocks / data if data else 0.0
