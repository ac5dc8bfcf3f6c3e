"""plan() at the scale of issue 16: a 512-pod generation losing one member. What it writes stays bounded
(the Failure Event, the membership record) whatever the job's size."""

from __future__ import annotations

import pytest
from test_operator_support import NOW, agent, at, ckpt, job, node, pod, summarize

from elastra.api.membership import Member, Membership
from elastra_operator.parse import departing
from elastra_operator.reconcile.actions import Event
from elastra_operator.reconcile.plan import plan
from elastra_operator.reconcile.views import OperatorRecord

PODS = 512
STARTED = OperatorRecord(started_at=at(-500), last_rescale_at=at(-500), rescale_reason="Start")
EVENT_MESSAGE_LIMIT = 1024
"""What `kubectl describe` and most event sinks show of a message; the kubelet truncates to this too."""
CONFIGMAP_LIMIT = 1024 * 1024


def big_membership(pods: int) -> Membership:
    return Membership(
        generation=1,
        phase="Run",
        world_size=pods,
        master_addr="10.0.0.0",
        members=tuple(
            Member(pod=f"tj-w-{i}", node=f"n{i}", pod_ip=f"10.0.{i // 250}.{i % 250}", rank_start=i, nprocs=1)
            for i in range(pods)
        ),
    )


def peers_lost_one(silent: int, *, ago: float) -> list:  # type: ignore[type-arg]
    reason = "PeerLost: worker rank 0 exited with code 75: collective failed"
    report = {"exitCode": 75, "reason": reason, "time": at(-ago)}
    return [
        pod(i, report=agent(1, "Running") if i == silent else agent(1, "Failed", **report))
        for i in range(PODS)
    ]


@pytest.mark.parametrize(
    ("silent", "ago"),
    [
        pytest.param(101, 1.5, id="511-peers-report-one-member-silent"),
        pytest.param(0, 1.5, id="rank-0-silent"),
    ],
)
def test_one_member_lost_of_512_writes_a_bounded_failure_event(silent: int, ago: float) -> None:
    view = job(m=big_membership(PODS), record=STARTED, replicas={"min": 256, "max": PODS})
    actions = plan(view, peers_lost_one(silent, ago=ago), [node(i) for i in range(PODS)], [ckpt(40)], NOW)

    summary = summarize(actions)
    assert summary.membership is not None and summary.membership.generation == 2
    assert summary.membership.world_size == PODS - 1
    assert f"tj-w-{silent}" not in {m.pod for m in summary.membership.members}
    failure = next(a for a in actions if isinstance(a, Event) and a.reason == "Failure")
    assert len(failure.message) <= EVENT_MESSAGE_LIMIT, len(failure.message)
    assert f"silent since: tj-w-{silent}" in failure.message
    assert f"and {PODS - 1 - 5} more ({PODS - 1 - 5} PeerLost)" in failure.message


def test_membership_record_of_512_members_fits_a_configmap_many_times_over() -> None:
    record = big_membership(PODS).to_json().encode()
    assert len(record) * 8 < CONFIGMAP_LIMIT, len(record)


M2 = big_membership(2)


@pytest.mark.parametrize(
    ("members", "pods", "fresh"),
    [
        pytest.param(M2, [pod(0), pod(1)], False, id="steady-uses-the-node-index"),
        pytest.param(M2, [pod(0), pod(1, deleting=True)], True, id="a-pod-being-deleted-reads-nodes-fresh"),
        pytest.param(M2, [pod(0)], True, id="a-member-gone-reads-nodes-fresh"),
        pytest.param(None, [pod(0, deleting=True)], True, id="deleting-before-any-record"),
        pytest.param(None, [pod(0)], False, id="no-record-nothing-departs"),
    ],
)
def test_departures_read_the_nodes_fresh(members: Membership | None, pods: list, fresh: bool) -> None:  # type: ignore[type-arg]
    """A drain cordons the node, then evicts: the index may not show the cordon yet when the eviction
    arrives, and only the fresh node says the departure is a drain, not a failure."""
    assert departing(job(m=members), pods) is fresh


def partly_reported(reported: int, *, ago: float) -> list:  # type: ignore[type-arg]
    reason = "PeerLost: worker rank 0 exited with code 75: collective failed"
    failed = {"exitCode": 75, "reason": reason, "time": at(-ago)}
    return [
        pod(i, report=agent(1, "Failed", **failed) if i < reported else agent(1, "Running"))
        for i in range(PODS)
    ]


@pytest.mark.parametrize(
    ("reported", "ago", "written"),
    [
        pytest.param(300, 1.5, False, id="212-silent-after-1s-quiet-are-late-reports-wait"),
        pytest.param(300, 6, True, id="212-silent-after-the-settle-time-are-left-out"),
        pytest.param(500, 1.5, True, id="12-silent-of-512-after-1s-quiet-are-left-out"),
    ],
)
def test_many_silent_members_are_late_reports_not_dead_pods(reported: int, ago: float, written: bool) -> None:
    view = job(m=big_membership(PODS), record=STARTED, replicas={"min": 2, "max": PODS})
    actions = plan(view, partly_reported(reported, ago=ago), [node(i) for i in range(PODS)], [ckpt(40)], NOW)
    summary = summarize(actions)
    if written:
        assert summary.membership is not None and summary.membership.world_size == reported
    else:
        assert summary.membership is None and summary.phase == "Rescaling"
