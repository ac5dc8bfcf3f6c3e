"""When plan() says a counted failure was detected: its earliest evidence, not the pass that counted it.

The recovery time (`elastra_recovery_seconds`, the `Recovered` Event) runs from this time, so a standby
operator that takes over late, or a pass that waited for a NotReady node, still measures from the
agent's report or the node's transition."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from test_operator_support import NOW, agent, at, job, membership, node, nodes, pod, summarize

from elastra_operator.reconcile.plan import plan
from elastra_operator.reconcile.views import OperatorRecord

M3 = membership(1, ["tj-w-0", "tj-w-1", "tj-w-2"])
STARTED = OperatorRecord(started_at=at(-500), last_rescale_at=at(-500), rescale_reason="Start")


def running(*indices: int) -> list[Any]:
    return [pod(i, report=agent(1, "Running")) for i in indices]


def failed(index: int, ago: float, *, generation: int = 1, reason: str | None = None) -> Any:
    report = agent(generation, "Failed", exitCode=137, time=at(-ago), reason=reason)
    return pod(index, report=report)


PEER = "PeerLost: worker rank 0 exited with code 75: collective failed"

CASES = [
    pytest.param(STARTED, [failed(0, 7), *running(1, 2)], nodes(3), at(-7), id="agent-failed-report-time"),
    pytest.param(
        STARTED,
        running(0, 1, 2),
        [node(0), node(1), node(2, ready=False, not_ready_since=at(-60))],
        at(-60),
        id="node-lost-from-its-notready-transition",
    ),
    pytest.param(
        STARTED,
        [failed(0, 10, reason=PEER), failed(1, 9, reason=PEER), failed(2, 8, reason=PEER)],
        nodes(3),
        at(-10),
        id="peer-errors-only-earliest-report",
    ),
    pytest.param(
        STARTED,
        [pod(0, phase="Failed", exit_code=137), *running(1, 2)],
        nodes(3),
        NOW,
        id="no-evidence-falls-back-to-now",
    ),
    pytest.param(
        STARTED,
        [failed(0, -5), *running(1, 2)],
        nodes(3),
        NOW,
        id="agent-clock-ahead-is-capped-at-now",
    ),
    pytest.param(
        STARTED,
        [pod(0, phase="Failed", exit_code=137, report=agent(0, "Failed", exitCode=137, time=at(-900)))],
        nodes(3),
        NOW,
        id="report-of-an-older-generation-is-no-evidence",
    ),
    pytest.param(
        STARTED.model_copy(update={"last_rescale_at": at(-30)}),
        running(0, 1, 2),
        [node(0), node(1), node(2, ready=False, not_ready_since=at(-60))],
        at(-30),
        id="evidence-older-than-the-generation-is-bounded-by-its-start",
    ),
    pytest.param(
        STARTED,
        [failed(0, 7), *running(1, 2)],
        [node(0), node(1), node(2, ready=False, not_ready_since=at(-60))],
        at(-60),
        id="earliest-of-several-counted-failures",
    ),
    pytest.param(
        STARTED.model_copy(update={"failure_detected_at": at(-100), "failure_generation": 0, "failures": 1}),
        [failed(0, 7), *running(1, 2)],
        nodes(3),
        at(-100),
        id="unrecovered-earlier-failure-keeps-its-time",
    ),
]


@pytest.mark.parametrize(("record", "pods", "node_views", "expected"), CASES)
def test_failure_detected_at_is_the_earliest_evidence(
    record: OperatorRecord, pods: list[Any], node_views: list[Any], expected: dt.datetime
) -> None:
    out = summarize(plan(job(m=M3, record=record), pods, node_views, [], NOW))
    assert "Failure" in out.events
    assert out.record is not None
    assert out.record.failure_detected_at == expected


def test_plan_is_deterministic_for_the_detected_time() -> None:
    args = (job(m=M3, record=STARTED), [failed(0, 7), *running(1, 2)], nodes(3), [], NOW)
    assert plan(*args) == plan(*args)
