"""Which worker pod changes trigger an immediate planning pass (`handlers.pod_signature`)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from elastra_operator.handlers import pod_signature


def worker(
    *, phase: str = "Running", agent: dict[str, Any] | None = None, commit: int | None = None, **meta: Any
) -> dict[str, Any]:
    annotations = {}
    if agent is not None:
        annotations["elastra.dev/agent"] = json.dumps(agent)
    if commit is not None:
        annotations["elastra.dev/commit"] = json.dumps({"step": commit})
    return {
        "metadata": {"name": "tj-w-0", "annotations": annotations, **meta},
        "spec": {"nodeName": "node-1"},
        "status": {"phase": phase, "podIP": "127.0.0.5"},
    }


RUNNING = {"generation": 2, "state": "Running", "step": 10, "time": "t1"}


@pytest.mark.parametrize(
    ("before", "after", "triggers"),
    [
        pytest.param(
            worker(agent=RUNNING),
            worker(agent={**RUNNING, "step": 30, "time": "t2"}),
            False,
            id="step-report-alone-does-not-trigger",
        ),
        pytest.param(
            worker(agent=RUNNING),
            worker(agent={**RUNNING, "state": "Failed", "exitCode": 75}),
            True,
            id="agent-failure-triggers",
        ),
        pytest.param(
            worker(agent=RUNNING),
            worker(agent={**RUNNING, "generation": 3}),
            True,
            id="new-generation-report-triggers",
        ),
        pytest.param(
            worker(agent=RUNNING),
            worker(agent={**RUNNING, "ackRequest": "r-1"}),
            True,
            id="request-answer-triggers",
        ),
        pytest.param(worker(commit=20), worker(commit=40), True, id="new-commit-triggers"),
        pytest.param(worker(phase="Pending"), worker(phase="Running"), True, id="pod-running-triggers"),
        pytest.param(
            worker(), worker(deletionTimestamp="2026-01-01T00:00:00Z"), True, id="deletion-triggers"
        ),
        pytest.param(worker(), worker(labels={"x": "y"}), False, id="unrelated-metadata-does-not-trigger"),
    ],
)
def test_pod_signature(before: dict[str, Any], after: dict[str, Any], triggers: bool) -> None:
    assert (pod_signature(before) != pod_signature(after)) is triggers


@pytest.mark.parametrize(
    "raw", [pytest.param("{not json", id="not-json"), pytest.param("[1, 2]", id="not-an-object")]
)
def test_unreadable_annotation_still_has_a_signature(raw: str) -> None:
    pod = worker()
    pod["metadata"]["annotations"]["elastra.dev/agent"] = raw
    changed = worker()
    changed["metadata"]["annotations"]["elastra.dev/agent"] = raw + " "
    assert pod_signature(pod) != pod_signature(changed)


def test_a_burst_of_peer_lost_reports_schedules_one_follow_up_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """511 PeerLost reports of a 512-pod job: one follow-up thread, one pass, after the last report."""
    import threading
    import time

    from elastra_operator import handlers

    passes: list[tuple[str, str]] = []
    done = threading.Event()

    def counted(namespace: str, name: str) -> None:
        passes.append((namespace, name))
        done.set()

    monkeypatch.setattr(handlers, "run_pass", counted)
    threads_before = threading.active_count()
    last = 0.0
    for _ in range(511):
        handlers.follow_up("ns", "big", 0.2)
        last = time.monotonic()
    assert threading.active_count() <= threads_before + 1
    assert done.wait(5)
    assert time.monotonic() - last >= 0.2
    time.sleep(0.3)
    assert passes == [("ns", "big")]


def _event(uid: str, agent: dict[str, Any]) -> dict[str, Any]:
    pod = worker(agent=agent, uid=uid, namespace="ns", labels={"elastra.dev/job": "big"})
    return pod


def test_heartbeats_stop_at_kopfs_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a pod's signature was acted on, its heartbeats (new step and time only) do not pass the
    handler's `when=` filter: Kopf neither invokes nor logs a handler for them. A deletion always does."""
    import kopf

    from elastra_operator import handlers

    monkeypatch.setattr(handlers._Passes, "seen", {})
    first = kopf.Body(_event("u-1", RUNNING))
    beat = kopf.Body(_event("u-1", {**RUNNING, "step": 11, "time": "t2"}))
    failed = kopf.Body(_event("u-1", {**RUNNING, "state": "Failed"}))
    assert handlers._may_move_the_plan(type="ADDED", body=first)
    handlers._Passes.seen["u-1"] = pod_signature(first)
    assert not handlers._may_move_the_plan(type="MODIFIED", body=beat)
    assert handlers._may_move_the_plan(type="MODIFIED", body=failed)
    assert handlers._may_move_the_plan(type="DELETED", body=beat)


def test_the_pod_handler_never_waits_for_a_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler runs on Kopf's event loop and only queues the pass: a slow pass (a loaded API server)
    must not hold the loop, or every pod's events queue up inside Kopf (they grew the operator to 1 GB
    with 100 jobs x 16 heartbeating pods). Requests for a job already queued are merged."""
    import asyncio
    import threading
    import time

    import kopf

    from elastra_operator import handlers

    release = threading.Event()
    started = threading.Event()
    passes: list[tuple[str, str]] = []

    def slow_pass(namespace: str, name: str) -> None:
        passes.append((namespace, name))
        started.set()
        release.wait(10)

    monkeypatch.setattr(handlers, "_one_pass", slow_pass)
    monkeypatch.setattr(handlers._Passes, "seen", {})

    async def deliver(pods: range) -> None:
        for i in pods:
            body = kopf.Body(_event(f"u-{i}", {**RUNNING, "generation": 3}))
            await asyncio.wait_for(handlers.worker_pod_changed(type="MODIFIED", body=body), timeout=1)

    try:
        asyncio.run(deliver(range(1)))
        assert started.wait(5)  # the first event's pass is running, and blocked
        asyncio.run(deliver(range(1, 50)))  # every event is handled while it is blocked
        time.sleep(0.2)
        assert passes == [("ns", "big")]  # one running; the other 49 requests merged into one more
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while len(passes) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    assert passes == [("ns", "big")] * 2
