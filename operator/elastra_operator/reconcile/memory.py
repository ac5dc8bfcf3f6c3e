"""Whether a new generation can restore from the memory tier, and the Event when it cannot. Pure."""

from __future__ import annotations

from collections.abc import Collection

from elastra.api.membership import Membership, MembershipPhase
from elastra.api.memory import MemoryTier, lost_groups, plan_groups

from .actions import Event


def memory_loss_event(
    memory: MemoryTier | None, current: Membership, survivors: Collection[str], fallback: str | None
) -> Event | None:
    """An Event when the pods leaving `current` (a `Run` generation) take more of an erasure-coding
    group than its parity covers: the memory snapshot of that generation cannot be rebuilt, so the
    next generation restores from the disk or S3 checkpoint `fallback`. None otherwise (the workers
    then restore from memory, rebuilding what the lost pods held)."""
    if memory is None or current.phase is not MembershipPhase.RUN or not current.members:
        return None
    pods = [m.pod for m in sorted(current.members, key=lambda m: m.rank_start)]
    lost = lost_groups(plan_groups(pods, memory.group_size, memory.parity), set(survivors))
    if not lost:
        return None
    gone = sorted({p for g in lost for p in (*g.members, *g.holders) if p not in survivors})
    target = f"checkpoint {fallback}" if fallback else "the start (no checkpoint yet)"
    return Event(
        reason="MemorySnapshotLost",
        message=(
            f"memory snapshot of generation {current.generation} cannot be rebuilt: "
            f"{', '.join(gone)} gone, more than parity {memory.parity} of group(s) "
            f"{', '.join(str(g.index) for g in lost)}; restoring from {target}"
        ),
        warning=True,
    )
