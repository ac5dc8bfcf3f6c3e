"""The membership record of the next generation, and the checkpoint it restores. Pure."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from elastra.api.membership import Member, Membership, MembershipPhase, RestorePoint

from .manifests import MASTER_PORT
from .views import CheckpointView, PodView

RENDEZVOUS_PORTS = 16
"""Generations of one job cycle through this many consecutive rendezvous ports."""
RENDEZVOUS_JOB_SLOTS = 128
"""Jobs are spread over this many blocks of `RENDEZVOUS_PORTS` ports above `MASTER_PORT`."""


def rendezvous_port(job_uid: str, generation: int) -> int:
    """The rendezvous port of a job's `generation`: never the previous generation's. A pod that starts
    the new generation while the old rank 0 is still being stopped then cannot reach the old store (its
    connection would be reset as that store dies, failing the new worker); it retries on the new port
    until the new rank 0 listens. Each job gets its own block of ports (by a stable hash of its uid),
    so jobs whose pods share a network (hostNetwork, localcluster) rarely meet on one port; on a
    normal cluster every pod has its own network namespace and any port is free."""
    slot = zlib.crc32(job_uid.encode()) % RENDEZVOUS_JOB_SLOTS
    return MASTER_PORT + slot * RENDEZVOUS_PORTS + generation % RENDEZVOUS_PORTS


def restore_point(
    checkpoints: Sequence[CheckpointView], restore_from: CheckpointView | None
) -> RestorePoint | None:
    """The newest of the job's committed `checkpoints` (sorted by step) that no restore found unusable,
    else the spec's `restoreFrom`, else None (a fresh start)."""
    usable = [c for c in checkpoints if c.verified]
    source = usable[-1] if usable else restore_from
    if source is None:
        return None
    return RestorePoint(checkpoint=source.name, step=source.step, uri=source.uri)


def next_membership(
    current: Membership,
    phase: MembershipPhase,
    pods: Sequence[PodView],
    *,
    job_uid: str,
    nproc: int,
    restore: RestorePoint | None,
) -> Membership:
    """Generation `current + 1` with `pods` as members in this order (pod i holds ranks
    `i*nproc ... i*nproc + nproc - 1`); rank 0's pod IP is the rendezvous address, on
    `rendezvous_port(job_uid, generation)`. Any checkpoint request of the current generation ends with it."""
    generation = current.generation + 1
    members = tuple(
        Member(pod=p.name, node=p.node or "", pod_ip=p.ip or "", rank_start=i * nproc, nprocs=nproc)
        for i, p in enumerate(pods)
    )
    return Membership(
        generation=generation,
        phase=phase,
        world_size=len(members) * nproc,
        nproc_per_pod=nproc,
        master_addr=members[0].pod_ip if members else "",
        master_port=rendezvous_port(job_uid, generation),
        members=members,
        restore=restore,
        checkpoint_request=None,
    )
