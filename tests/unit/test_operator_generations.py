"""`reconcile.generations`: the next membership record (ranks, rendezvous) and its restore point."""

from __future__ import annotations

import datetime as dt

import pytest

from elastra.api.membership import Membership, MembershipPhase
from elastra_operator.reconcile.generations import (
    RENDEZVOUS_JOB_SLOTS,
    RENDEZVOUS_PORTS,
    next_membership,
    rendezvous_port,
    restore_point,
)
from elastra_operator.reconcile.manifests import MASTER_PORT
from elastra_operator.reconcile.views import CheckpointView, PodView

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _ckpt(step: int) -> CheckpointView:
    return CheckpointView(
        name=f"tj-step-{step}", job="tj", step=step, uri=f"s3://b/step-{step}", world_size=2, committed_at=T0
    )


@pytest.mark.parametrize("generation", [0, 1, RENDEZVOUS_PORTS - 1, RENDEZVOUS_PORTS, 1000])
def test_consecutive_generations_never_share_a_rendezvous_port(generation: int) -> None:
    assert rendezvous_port("uid-a", generation) != rendezvous_port("uid-a", generation + 1)


def test_rendezvous_ports_are_stable_in_range_and_spread_jobs() -> None:
    uids = [f"0000-{i:04d}" for i in range(64)]
    ports = {uid: {rendezvous_port(uid, g) for g in range(RENDEZVOUS_PORTS)} for uid in uids}
    assert all(rendezvous_port(u, 3) == rendezvous_port(u, 3) for u in uids), "pure: derived again alike"
    assert all(MASTER_PORT <= p < MASTER_PORT + RENDEZVOUS_PORTS * RENDEZVOUS_JOB_SLOTS
               for block in ports.values() for p in block)  # fmt: skip
    blocks = {min(block) for block in ports.values()}
    assert len(blocks) > len(uids) // 2, "jobs land on different port blocks"


def test_next_membership_ranks_pods_in_order_and_rendezvous_on_rank_0() -> None:
    current = Membership(generation=4, phase=MembershipPhase.RUN, world_size=2, nproc_per_pod=2)
    pods = [PodView(name=f"w-{i}", node=f"n{i}", phase="Running", ip=f"10.0.0.{i}", created_at=T0)
            for i in (3, 1)]  # fmt: skip
    new = next_membership(current, MembershipPhase.RUN, pods, job_uid="uid-a", nproc=2, restore=None)
    assert new.generation == 5
    assert new.world_size == 4
    assert [(m.pod, m.rank_start, m.nprocs) for m in new.members] == [("w-3", 0, 2), ("w-1", 2, 2)]
    assert (new.master_addr, new.master_port) == ("10.0.0.3", rendezvous_port("uid-a", 5))
    assert new.checkpoint_request is None


@pytest.mark.parametrize(
    ("checkpoints", "restore_from", "expected"),
    [
        pytest.param([_ckpt(10), _ckpt(20)], _ckpt(5), 20, id="newest-commit-wins"),
        pytest.param([], _ckpt(5), 5, id="spec-restore-from"),
        pytest.param([], None, None, id="fresh-start"),
    ],
)
def test_restore_point(
    checkpoints: list[CheckpointView], restore_from: CheckpointView | None, expected: int | None
) -> None:
    point = restore_point(checkpoints, restore_from)
    assert (point.step if point is not None else None) == expected
